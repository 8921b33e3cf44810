"""The chain on top of the stages: each command's input checks and call (`stages`), `janus run` (`pipeline`),
`janus demo` (`demo`) and what the CLI prints (`summary`). It imports janus_data, janus_train and janus_eval;
nothing imports it but the CLI."""
