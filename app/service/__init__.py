"""What the service does, whoever asks: the HTTP routes (app/api) and the CLI (app/cli) parse
their input, call these, and render the answer. Nothing here knows of HTTP."""
