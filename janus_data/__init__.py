"""janus_data: records, manifests, model adapters and the data stages (synth, score, filter)."""

__version__ = "0.1.0"
