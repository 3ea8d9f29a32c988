"""boson_multimodal's own model code (transformers < 4.48) as the tests' oracle: its HiggsAudioModel as a training
backend and its generation as a synthesizer. Imported only in the oracle venv (.venv-boson); a run reaches it with
`model.backend=tests.oracle.boson_v2:BACKEND` (BOSON_BACKEND in tests.helpers)."""
