"""`face-gateway enroll DIR --cluster`: a folder of unlabelled photos grouped into people.

Every photo under DIR (any folder depth, links not followed) is embedded through the
gateway (its primary face), the embeddings are clustered here with the gateway's own
clustering (gateway/registry/clustering.py), and each group is registered as one person
named `unknown-N` (numbered after the highest unknown-N already in the store), a photo like
no other as a person of its own. The caller renames (PATCH /v1/face/people/{id}) or merges
them later. As the plain enrolment, it skips photos whose `source` is already registered,
so an interrupted run resumes; the photos a run adds form people of their own.
"""
import argparse
import asyncio
import base64
import os
import pathlib
import re

import numpy as np

from .enroll import (Enroller, Progress, Refused, Tally, _raise_for, client_for,
                     is_image, read_photo)
from .registry import clustering

UNKNOWN = re.compile(r"unknown-(\d+)")


def all_photos(root: pathlib.Path) -> list[str]:
    """Every image under root (relative, '/'-separated); linked files and folders skipped."""
    photos = []
    for folder, _, files in os.walk(root):  # followlinks=False
        photos += [(pathlib.Path(folder) / f).relative_to(root).as_posix()
                   for f in files if is_image(pathlib.Path(folder) / f)]
    return sorted(photos)


async def embedding(enroller: Enroller, relative: str, tally: Tally) -> np.ndarray | None:
    args = enroller.args
    try:
        data = await asyncio.to_thread(read_photo, args.dir, relative, args.max_bytes)
    except Refused as exc:
        tally.failed.append(f"{relative}: {exc}")
        return None
    response = await enroller._request("POST", "/v1/face/embed", json={
        "model": args.model, "img": base64.b64encode(data).decode("ascii")})
    if response.status_code == 404:
        tally.no_face.append(relative)
        return None
    _raise_for(response, f"embedding {relative}")
    return np.asarray(response.json()["embedding"], np.float32)


async def next_unknown(enroller: Enroller) -> int:
    """1 + the highest N of the people named unknown-N of this model and store."""
    highest = 0
    async for person in enroller.listed("/v1/face/people", "listing people", name="unknown-"):
        if found := UNKNOWN.fullmatch(person["name"]):
            highest = max(highest, int(found.group(1)))
    return highest + 1


async def enroll_clusters(args: argparse.Namespace) -> Tally:
    async with client_for(args) as client:
        enroller = Enroller(args, client)
        await enroller.check_model()
        photos = all_photos(args.dir)
        done = await enroller.registered_sources()
        tally = Tally(total=len(photos), skipped=sum(p in done for p in photos))
        todo = [p for p in photos if p not in done]
        semaphore = asyncio.Semaphore(args.concurrency)

        async def embed(relative):
            async with semaphore:
                return await embedding(enroller, relative, tally)
        vectors = await asyncio.gather(*(embed(p) for p in todo))
        faces = [(p, v) for p, v in zip(todo, vectors) if v is not None]
        groups, alone = await asyncio.to_thread(clustering.cluster, [v for _, v in faces])
        first = await next_unknown(enroller)
        people = [c.members for c in groups] + [[i] for i in alone]
        progress, persons = Progress(tally), {}
        for n, members in enumerate(people, start=first):
            for i in members:  # one after another: the first creates the person
                await enroller.register(faces[i][0], tally, persons, person=f"unknown-{n}")
                progress.show()
        progress.show(final=True)
        return tally
