"""Build time, pure and without sockets: manifests -> providers -> model -> compile -> table; reload and watch
keep the compiled table current."""
