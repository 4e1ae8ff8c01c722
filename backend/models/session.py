"""onnxruntime session settings shared by every model class."""
import logging
import threading

import onnxruntime as ort

from .graph import optimised_model

log = logging.getLogger(__name__)

# Shape-inference warnings from onnxruntime are noise for a server log.
ort.set_default_logger_severity(3)


class RequestGauge:
    """How many requests are being served right now (the servicer enters it per RPC)."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            self.count += 1

    def __exit__(self, *exc):
        with self._lock:
            self.count -= 1


IN_FLIGHT = RequestGauge()


class AdaptiveSession:
    """One model as two sessions: several intra-op threads for a request served alone,
    one thread when requests overlap.

    Splitting one small convolution across threads bought 1.24x latency on 2 cores but
    cost throughput once every core already has a request of its own.
    """

    def __init__(self, wide: ort.InferenceSession, narrow: ort.InferenceSession):
        self.wide, self.narrow = wide, narrow

    def get_inputs(self):
        return self.wide.get_inputs()

    def get_outputs(self):
        return self.wide.get_outputs()

    def run(self, output_names, feeds):
        session = self.wide if IN_FLIGHT.count <= 1 else self.narrow
        return session.run(output_names, feeds)


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

    def __call__(self, path: str):
        model = optimised_model(path)
        if self.threads > 1 and self.providers == ["CPUExecutionProvider"]:
            return AdaptiveSession(self._session(model, self.threads), self._session(model, 1))
        return self._session(model, self.threads)

    def _session(self, model, threads: int) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(model, sess_options=opts, providers=self.providers)
