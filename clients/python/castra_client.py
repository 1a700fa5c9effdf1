#!/usr/bin/python3
"""A small castrad client in Python: a starting point for editor plugins.

castrad serves JSON-RPC 2.0 on a Unix socket: HTTP POST for calls, a WebSocket on the same
socket for castra.subscribeEvents (see proto-docs/PROTOCOL.md). This client uses the standard
library for the calls, the `websockets` package for the live feed, and `jsonschema` to check
every result and event against the OpenRPC document castrad serves (rpc.discover). On Debian:
apt-get install python3-websockets python3-jsonschema (scripts/setup does).

    castra_client.py plan CONFIG [OVERRIDE...]   the plan, one JSON line
    castra_client.py up CONFIG [OVERRIDE...]     each event of the run as a JSON line, then
                                                 {"outcome": ...}; exit 1 if a VM failed
    castra_client.py outcome OPERATION           how each VM of an operation ended
    castra_client.py status [CONFIG]             the daemon and its projects
    castra_client.py logs CONFIG VM [RUN]        a VM's durable logs

The socket is $CASTRA_SOCKET, else $XDG_RUNTIME_DIR/castra/castrad.sock. On stderr it says how
many messages it validated. A JSON-RPC error is printed on stderr (code, message, data) and
exits 2.
"""

import asyncio
import http.client
import json
import os
import socket
import sys

import jsonschema
import websockets

TERMINAL = ("BootstrapCompleted", "BootstrapFailed")


def socket_path():
    if os.environ.get("CASTRA_SOCKET"):
        return os.environ["CASTRA_SOCKET"]
    return os.path.join(os.environ["XDG_RUNTIME_DIR"], "castra", "castrad.sock")


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: only connect() differs."""

    def __init__(self, path):
        super().__init__("castrad")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


class RpcError(Exception):
    def __init__(self, error):
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.error = error


class Castra:
    def __init__(self, path):
        self.path = path
        self.next_id = 0
        self.validated = 0
        # The served description: which schema each method's result, and each event, follows.
        self.document = self.call_raw("rpc.discover", {})
        self.results = {}
        for method in self.document["methods"]:
            if method["name"] == "castra.event":
                self.event_schema = self.schema(
                    next(p for p in method["params"] if p["name"] == "result")["schema"]
                )
            elif "result" in method:
                self.results[method["name"]] = self.schema(method["result"]["schema"])

    def schema(self, schema):
        # The schema with the document's components beside it, so "#/components/..." resolves.
        return jsonschema.Draft202012Validator(
            {**schema, "components": self.document["components"]}
        )

    def check(self, validator, value, what):
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.path)
            raise SystemExit(f"castra_client: {what} does not match the schema at /{where}: {e.message}")
        self.validated += 1

    def call_raw(self, method, params):
        self.next_id += 1
        body = json.dumps({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        conn = UnixHTTPConnection(self.path)
        try:
            conn.request("POST", "/", body, {"content-type": "application/json"})
            reply = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    def call(self, method, **params):
        result = self.call_raw(method, params)
        self.check(self.results[method], result, f"the result of {method}")
        return result

    async def up(self, config, overrides, emit):
        """Starts `up` with a subscription already open, emits this operation's events until
        every VM has its terminal event, then returns castra.outcome (the authority)."""
        async with websockets.unix_connect(self.path, "ws://castrad/") as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "castra.subscribeEvents", "params": {}}))
            reply = json.loads(await ws.recv())
            if "error" in reply:
                raise RpcError(reply["error"])
            started = self.call("castra.up", config=config, bootstrap=overrides)
            waiting = set(started["vms"])
            while waiting:
                message = json.loads(await ws.recv())
                if message.get("method") != "castra.event":
                    continue  # e.g. a reply to a call we did not make on this socket
                envelope = message["params"]["result"]
                self.check(self.event_schema, envelope, "an event")
                if envelope["operation"] != started["operation"]:
                    continue
                emit({"event": envelope})
                # Unknown kinds are fine (newer castrad): they are shown and the feed goes on.
                (kind, body), = envelope["event"].items()
                if kind in TERMINAL:
                    waiting.discard(body.get("vm"))
        return self.call("castra.outcome", operation=started["operation"])


def main(argv):
    if len(argv) < 2 or argv[1] not in ("plan", "up", "outcome", "status", "logs"):
        raise SystemExit(__doc__)
    command, args = argv[1], argv[2:]
    castra = Castra(socket_path())

    def emit(value):
        print(json.dumps(value), flush=True)

    code = 0
    try:
        if command == "plan":
            emit(castra.call("castra.plan", config=os.path.abspath(args[0]), bootstrap=args[1:]))
        elif command == "up":
            outcome = asyncio.run(castra.up(os.path.abspath(args[0]), args[1:], emit))
            emit({"outcome": outcome})
            code = 1 if any(o["status"] in ("Failed", "Rejected") for o in outcome["outcomes"]) else 0
        elif command == "outcome":
            emit(castra.call("castra.outcome", operation=args[0]))
        elif command == "status":
            params = {"config": os.path.abspath(args[0])} if args else {}
            emit(castra.call("castra.status", **params))
        elif command == "logs":
            params = {"config": os.path.abspath(args[0]), "vm": args[1]}
            if len(args) > 2:
                params["run"] = args[2]
            emit(castra.call("castra.logs", **params))
    except RpcError as e:
        print(f"castra_client: error {json.dumps(e.error)}", file=sys.stderr)
        code = 2
    print(f"castra_client: {castra.validated} messages validated against the served schema", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
