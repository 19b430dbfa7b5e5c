"""One-off studies: each answered a question once (which judge, how long the autoencoder, which decode, which
student checkpoint, the rescoring under a new judge); their tables live in docs/. Run as modules:
`python -m benchmarks.studies.decode ...`."""
