"""Write a docker-archive (the format of `docker save`, which `ctr images import` reads) holding
images that all share one layer: the node's component images differ only in their names and
entrypoints, so containerd stores their one layer once.

    image-archive.py OUT.tar LAYER.tar 'NAME[,NAME...][=ENTRYPOINT]' ...
"""

from __future__ import annotations

import hashlib
import json
import sys
import tarfile
import io

PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def add_bytes(out: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))


def main(out_path: str, layer_path: str, specs: list[str]) -> None:
    layer = sha256(layer_path)
    manifest = []
    with tarfile.open(out_path, "w") as out:
        out.add(layer_path, f"{layer}/layer.tar")
        for spec in specs:
            names, _, entrypoint = spec.partition("=")
            config = {"architecture": "amd64", "os": "linux",
                      "config": {"Env": [PATH], "Entrypoint": [entrypoint] if entrypoint else None},
                      "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]}}
            data = json.dumps(config, sort_keys=True).encode()
            config_name = f"{hashlib.sha256(data).hexdigest()}.json"
            add_bytes(out, config_name, data)
            manifest.append({"Config": config_name, "RepoTags": names.split(","), "Layers": [f"{layer}/layer.tar"]})
        add_bytes(out, "manifest.json", json.dumps(manifest).encode())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
