"""onnxruntime session settings shared by every model class."""
import logging

import onnxruntime as ort

log = logging.getLogger(__name__)

# Shape-inference warnings from onnxruntime are noise for a server log.
ort.set_default_logger_severity(3)


class SessionFactory:
    """Builds sessions with one set of providers and threading rules.

    Spinning is off: idle sessions spinning against each other made two intra-op
    threads slower than one when requests run concurrently.
    """

    def __init__(self, use_cuda: bool = False, threads: int = 0):
        available = ort.get_available_providers()
        if use_cuda and "CUDAExecutionProvider" not in available:
            log.warning("CUDA was asked for but onnxruntime has no CUDAExecutionProvider "
                        "(install onnxruntime-gpu); running on the CPU")
        self.providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                          if use_cuda and "CUDAExecutionProvider" in available
                          else ["CPUExecutionProvider"])
        self.threads = threads
        log.info("onnxruntime providers: %s; intra-op threads: %s",
                 self.providers, threads or "onnxruntime default")

    def __call__(self, path: str) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if self.threads > 0:
            opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(path, sess_options=opts, providers=self.providers)
