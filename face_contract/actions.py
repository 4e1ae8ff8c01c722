"""FaceAnalyze's actions: those LocalAI's protocol names, and the ones this service computes.

emotion and race are accepted (LocalAI's clients send them) but no model here computes
them: their fields stay empty, and the gateway's answer names them so nobody reads the
silence as a result.
"""
SUPPORTED_ACTIONS = ("age", "gender")
UNSUPPORTED_ACTIONS = ("emotion", "race")
KNOWN_ACTIONS = SUPPORTED_ACTIONS + UNSUPPORTED_ACTIONS
