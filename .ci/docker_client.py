"""A caller in its own container: verify, register and identify through the gateway by its
service name (the registry behind it is compose's pgvector `db`). Standard library only."""
import base64
import json
import sys
import urllib.request

URL = sys.argv[1]
KEY = __import__("os").environ["API_KEY"]


def post(path: str, body: dict) -> dict:
    request = urllib.request.Request(URL + path, json.dumps(body).encode(), method="POST",
                                     headers={"x-api-key": KEY, "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def photo(name: str) -> str:
    with open(f"/in/{name}", "rb") as f:
        return base64.b64encode(f.read()).decode()


verify = post("/v1/face/verify", {"img1": photo("a.jpg"), "img2": photo("b.jpg")})
assert verify["verified"] is True, verify
differ = post("/v1/face/verify", {"img1": photo("a.jpg"), "img2": photo("other.jpg")})
assert differ["verified"] is False, differ
person = post("/v1/face/register", {"img": photo("a.jpg"), "name": "Anthony"})
found = post("/v1/face/identify", {"img": photo("b.jpg"), "top_k": 1})
assert found["matches"] and found["matches"][0]["id"] == person["id"], found
assert found["matches"][0]["match"] is True, found
print(json.dumps({"verify_same": verify["distance"], "verify_other": differ["distance"],
                  "threshold": verify["threshold"], "identify": found["matches"][0]}))
