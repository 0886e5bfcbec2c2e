"""The command lines: `moai-export` (export_cli), `moai-bench` (bench_cli), what both share
(base: exit codes, errors as one line), the demo and `verify`."""
