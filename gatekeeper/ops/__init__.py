"""What operators see: the admin listener, the config view with secrets masked, the dashboard, metrics, the
access log, and the demo echo upstream."""
