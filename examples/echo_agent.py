"""An example worker agent: `msgbus agent run examples.echo_agent:agent`.

It answers requests with what it understood, counts words for commands, and fails on
purpose for `{"fail": true}` payloads (to show retries and dead letters).
"""

from workers.agent import WorkerAgent

agent = WorkerAgent("echo")


@agent.on("request")
def echo(message):
    payload = message.payload
    if isinstance(payload, dict) and payload.get("fail"):
        raise RuntimeError(f"asked to fail: {payload.get('why', 'no reason given')}")
    return {"echo": payload, "from": agent.name}


@agent.on("command")
def count_words(message):
    text = message.payload.get("text", "") if isinstance(message.payload, dict) else ""
    return {"words": len(text.split())}
