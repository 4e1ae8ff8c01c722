"""`python -m backend --addr HOST:PORT`: the face backend as LocalAI starts it."""
import argparse
import logging
import os
import signal
import threading

from .server import make_server


def main(argv=None):
    parser = argparse.ArgumentParser(prog="face-backend", description=__doc__)
    parser.add_argument("--addr", default="127.0.0.1:50051", help="HOST:PORT to listen on")
    parser.add_argument("--workers", type=int, default=None, help="gRPC worker threads")
    parser.add_argument("--log-level", default=os.environ.get("FACE_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = make_server(args.addr, args.workers)
    server.start()
    logging.getLogger("backend").info("face backend listening on %s", args.addr)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
