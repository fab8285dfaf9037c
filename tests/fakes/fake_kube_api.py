"""FAKE Kubernetes API server: the few paths pytest-buildenv's helpers use, on loopback.

Creates ConfigMaps, Services and Deployments (POST), lists and reads them (GET),
lists nodes and pods. A Deployment turns ready after `ready_after` reads of it,
so wait_ready() is exercised against a real HTTP server that changes state.
Not a substitute for a cluster: the real-cluster tests cover the rest.
"""

from __future__ import annotations

import json
import re
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

ROUTE = re.compile(r"^/(?:api/v1|apis/apps/v1)/(?:namespaces/(?P<ns>[^/]+)/)?(?P<plural>[a-z]+)(?:/(?P<name>[^/?]+))?")
KINDS = {"configmaps": "ConfigMap", "services": "Service", "deployments": "Deployment", "pods": "Pod", "nodes": "Node"}


class FakeKubeAPI:
    def __init__(self, ready_after: int = 3, host: str = "127.0.0.1", port: int = 0,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.ready_after = ready_after
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.reads: dict[tuple[str, str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.nodes_ready = True
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                api.requests.append(("GET", self.path))
                code, body = api.get(self.path)
                self._send(code, body)

            def do_POST(self) -> None:
                api.requests.append(("POST", self.path))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code, reply = api.post(self.path, body)
                self._send(code, reply)

        self.server = ThreadingHTTPServer((host, port), Handler)
        if tls is not None:  # inside the FAKE kind node, behind kind's published API port
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKubeAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        match = ROUTE.match(path)
        if not match:
            return 404, {"kind": "Status", "status": "Failure", "code": 404}
        ns, plural = match["ns"] or "default", match["plural"]
        key = (plural, ns, body["metadata"]["name"])
        if key in self.objects:
            return 409, {"kind": "Status", "status": "Failure", "reason": "AlreadyExists", "code": 409}
        body.setdefault("metadata", {})["namespace"] = ns
        if plural == "deployments":
            body["status"] = {"readyReplicas": 0, "replicas": body["spec"].get("replicas", 1)}
        self.objects[key] = body
        return 201, body

    def _view(self, key: tuple[str, str, str]) -> dict[str, Any]:
        obj = self.objects[key]
        if key[0] == "deployments":
            self.reads[key] = self.reads.get(key, 0) + 1
            if self.reads[key] >= self.ready_after:
                obj["status"]["readyReplicas"] = obj["spec"].get("replicas", 1)
        return obj

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        match = ROUTE.match(path)
        if not match:
            return 404, {"kind": "Status", "status": "Failure", "code": 404}
        ns, plural, name = match["ns"] or "default", match["plural"], match["name"]
        if plural == "nodes":
            status = "True" if self.nodes_ready else "False"
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "fake-control-plane"},
                    "status": {"conditions": [{"type": "Ready", "status": status}]}}
            return 200, {"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": [node]}
        if name:
            key = (plural, ns, name)
            if key not in self.objects:
                return 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404}
            return 200, self._view(key)
        items = [self._view(k) for k in list(self.objects) if k[0] == plural and k[1] == ns]
        return 200, {"apiVersion": "v1", "kind": f"{KINDS.get(plural, 'Object')}List", "metadata": {}, "items": items}


if __name__ == "__main__":  # the FAKE kind node's API server: fake_kube_api.py PORT CERT KEY
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with FakeKubeAPI(ready_after=3, host="0.0.0.0", port=port, tls=context) as served:
        print(f"fake API server at {served.url}", flush=True)
        served.thread.join()
