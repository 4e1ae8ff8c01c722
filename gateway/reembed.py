"""`face-gateway reembed [--model M] [--store S]`: rebuilds, through a running gateway, the
templates of the faces that another recognizer made, from the crops kept with --keep-crops.

After the recognizer behind a model changed, register answers 409 while a face of the model
holds a template of the old one (and identify, when such a face ranks among its top_k). This calls the gateway's POST /v1/face/reembed
batch after batch (each face's new embedding and fingerprint are written together) and shows
the progress; it ends listing the faces that kept no crop, which must be registered again
(forget them first). It runs in the gateway, not on the store's file: a local store admits one
process, and the gateway holds the backends that load the new recognizer. Run it again at
any time: only faces still made by another recognizer are touched.
"""
import argparse
import os
import pathlib
import sys
import time

import httpx

from .enroll import _message, api_key


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="face-gateway reembed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--model", default=None, help="model (default: the gateway's default model)")
    p.add_argument("--store", default=None, help="registry store (default: the gateway's)")
    p.add_argument("--url", default=os.environ.get("FACE_URL", "http://127.0.0.1:8080"),
                   help="the gateway; env FACE_URL (default http://127.0.0.1:8080)")
    p.add_argument("--batch", type=int, default=64,
                   help="faces re-embedded per request (1-1000, default 64)")
    p.add_argument("--api-key-file", type=pathlib.Path, default=None, metavar="FILE",
                   help="a file whose first line is the API key sent as x-api-key; or env "
                        "FACE_API_KEY")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    args = p.parse_args(argv)
    if not 1 <= args.batch <= 1000:
        p.error("--batch must be between 1 and 1000")
    args.api_key = api_key(p, args.api_key_file)
    return args


def run(args: argparse.Namespace) -> dict:
    """POST /v1/face/reembed until no face with a crop is left; the last answer."""
    body = {"limit": args.batch, **{k: v for k, v in (("model", args.model),
                                                      ("store", args.store)) if v}}
    headers = {"x-api-key": args.api_key} if args.api_key else {}
    done, started = 0, time.monotonic()
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        while True:
            response = client.post("/v1/face/reembed", json=body)
            if response.status_code != 200:
                raise SystemExit(f"face-gateway reembed: HTTP {response.status_code} "
                                 f"{_message(response)} (after {done} faces re-embedded)")
            answer = response.json()
            done += answer["reembedded"]
            total = done + answer["remaining"]
            rate = done / max(time.monotonic() - started, 1e-9)
            print(f"reembed {answer['model']} in {answer['store']}: {done}/{total} faces "
                  f"{rate:.1f}/s", file=sys.stderr, flush=True)
            if answer["remaining"] == 0 or answer["reembedded"] == 0:
                return {**answer, "reembedded": done}


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        answer = run(args)
    except httpx.TransportError as exc:
        raise SystemExit(f"face-gateway reembed: cannot reach {args.url} ({exc}); run it again "
                         "to go on") from None
    print(f"re-embedded {answer['reembedded']} faces of model {answer['model']} in store "
          f"{answer['store']} with recognizer {answer['recognizer']}")
    if answer["remaining"]:  # stale crops that no call could rewrite (forgotten meanwhile?)
        print(f"{answer['remaining']} faces still wait: run it again")
    if answer["without_crop"]:
        print(f"faces without a kept crop: {answer['without_crop']}; they need registering "
              "again (forget them, then register their photos):")
        for face_id in answer["without_crop_ids"]:
            print(face_id)
        shown = len(answer["without_crop_ids"])
        if answer["without_crop"] > shown:
            print(f"... and {answer['without_crop'] - shown} more (GET /v1/face/registry)")
    if answer["remaining"] or answer["without_crop"]:
        sys.exit(1)
