"""`python -m backend --addr HOST:PORT`: the face backend as LocalAI starts it."""
import argparse
import logging
import os
import signal

import cv2

from .server import make_server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="face-backend", description=__doc__)
    parser.add_argument("--addr", default="127.0.0.1:50051", help="HOST:PORT to listen on")
    parser.add_argument("--workers", type=int, default=None, help="gRPC worker threads")
    parser.add_argument("--log-level", default=os.environ.get("FACE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # cv2.dnn warns about unsupported targets on every YuNet/SFace load: noise at normal levels.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    # SIGTERM/SIGINT are blocked before any server thread exists (threads inherit the
    # mask) and taken with sigwait: a Python handler that sets an Event can deadlock
    # on the Event's lock when the signal lands while the main thread holds it.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = make_server(args.addr, args.workers)
    server.start()
    log = logging.getLogger("backend")
    log.info("face backend listening on %s", args.addr)
    received = signal.sigwait(stop_signals)
    log.info("%s: stopping", signal.Signals(received).name)
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
