return Tapml.Cli.App.Run(args);
