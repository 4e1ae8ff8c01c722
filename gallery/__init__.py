"""Model gallery and installer: which face models exist, and putting their weights in a models folder."""

# The commercial-safe engine (YuNet + SFace, Apache-2.0 / MIT) that `make run` installs
# when no model is named; the InsightFace packs are research-only.
DEFAULT_MODEL = "insightface-opencv"
