#!/usr/bin/env python3
"""A small external engine for dagstream: runs a three-step DAG with a gate.

dagstream does not execute this run: this program does, and reports every change over
the engine endpoint. People decide the gate in the dashboard; the decision comes back here.

    pip install websockets
    DAGSTREAM_TOKEN=... python3 examples/external_engine.py [http://127.0.0.1:3000]

The token needs the admin or engine role (`dagstream user add robot --role engine`).
Stop it while it waits at the gate and start it again with DAGSTREAM_RUN=<dag_id>: it
reconnects, reads the snapshot and goes on from where the run is.
"""

import asyncio
import datetime
import json
import os
import sys
import urllib.request

import websockets

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000"
TOKEN = os.environ["DAGSTREAM_TOKEN"]
AUTH = {"Authorization": f"Bearer {TOKEN}"}

RUN = {
    "external": True,
    "name": "external: fetch, review, publish",
    "budget": 1.0,
    "nodes": [
        {"id": "fetch", "label": "Fetch sources"},
        {"id": "review", "label": "Review", "kind": "gate", "needs": ["fetch"]},
        {"id": "publish", "label": "Publish", "needs": ["review"]},
    ],
}


def create_run() -> str:
    request = urllib.request.Request(
        f"{BASE}/api/dags",
        data=json.dumps(RUN).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return json.load(response)["dag_id"]


async def main() -> None:
    dag_id = os.environ.get("DAGSTREAM_RUN") or create_run()
    print(f"run {dag_id}: open {BASE}/dags/{dag_id}")
    url = BASE.replace("http", "ws", 1) + f"/api/dags/{dag_id}/engine"
    async with websockets.connect(url, additional_headers=AUTH) as socket:

        async def send(event: dict) -> None:
            await socket.send(json.dumps(event))

        async def node(node_id: str, status: str, **extra) -> None:
            await send({"type": "node_state", "node_id": node_id, "status": status, **extra})

        snapshot = json.loads(await socket.recv())["run"]
        status = {node_id: view["status"] for node_id, view in snapshot["nodes"].items()}

        if status["fetch"] != "completed":
            await node("fetch", "running")
            for step in range(1, 4):
                await asyncio.sleep(0.5)
                await node("fetch", "running", output={"progress": step / 3})
            await send({"type": "cost_update", "spent": 0.2, "budget": 1.0, "remaining": 0.8})
            await node("fetch", "completed", output={"sources": 3})
            await send({"type": "edge_active", "from": "fetch", "to": "review"})

        decision = "approve"
        if status["review"] != "completed":
            await send({
                "type": "human_gate_waiting",
                "node_id": "review",
                "presentation": {
                    "title": "Publish what was fetched?",
                    "prompt": "Three sources were fetched. Publish them?",
                    "options": ["approve", "reject"],
                },
            })
            # Commands from the dashboards arrive here; errors about our own events too.
            while True:
                message = json.loads(await socket.recv())
                if message.get("type") == "human_decision" and message.get("node_id") == "review":
                    decision = message["decision"]
                    await send({
                        "type": "gate_resolved",
                        "node_id": "review",
                        "decision": decision,
                        "decided_by": message.get("actor", "someone"),
                        "decided_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    })
                    break
                if message.get("type") == "error":
                    print("dagstream says:", message["message"])
            await node("review", "completed", output={"decision": decision})

        if decision == "approve":
            await node("publish", "running")
            await asyncio.sleep(0.5)
            await node("publish", "completed", output={"url": "https://example.com/post"})
            await send({"type": "run_state", "state": "completed"})
        else:
            await node("publish", "skipped")
            await send({"type": "run_state", "state": "failed"})
        await send({"type": "execution_complete", "results": {"review": {"decision": decision}}})
        print("done:", decision)


if __name__ == "__main__":
    asyncio.run(main())
