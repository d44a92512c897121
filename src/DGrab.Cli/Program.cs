return DGrab.Cli.App.Run(args);
