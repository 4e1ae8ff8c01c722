"""The quality gate's levels: a model's `quality_gate` option (checked by the backend when it
loads the model) and a request's `quality_gate` (the gateway's; bounds in gateway/quality.py)."""
GATE_LEVELS = ("off", "low", "medium", "high")
DEFAULT_GATE = "medium"
