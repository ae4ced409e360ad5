"""Every Redis key the bus uses, built from the configured prefix (default ``msgbus:``).

Keyspace (``P`` = prefix; ``{a}`` = agent id in a hash tag so one agent's keys share a slot):

    P agents                       zset   agent -> first-seen ms: agents that connected (read,
                                          subscribed, sent) or were declared
    P worker_agents                set    agents served by a `msgbus agent run` process
    P unconfirmed                  zset   message id -> ms its admission's lease ends:
                                          admitted, not yet known to be in the broker
                                          (bus.outbox publishes it again once that passes)
    P unconfirmed:wires            hash   message id -> its wire, until then
    P ghosts                       zset   agent that never connected -> ms of the latest mail
                                          admitted for it (the purge drops its stale mail)
    P agent:{a}:seen               string last-seen ms
    P inbox:{a}:ready              zset   message id -> priority rank * 2^40 + sequence
    P inbox:{a}:leased             zset   message id -> lease deadline ms
    P inbox:{a}:body               hash   message id -> stored wire JSON
    P inbox:{a}:meta               hash   message id -> "score|delivery count|sender"
    P inbox:{a}:pending            zset   message id -> expiry ms: admitted for a, not yet
                                          delivered (counts toward the inbox cap)
    P inbox:{a}:senders            hash   sender -> messages from it in a's inbox
    P inbox:seq                    string global FIFO sequence for ready scores
    P history:{a}                  zset   wire JSON -> timestamp ms of what a received (capped
                                          per agent, in entries and in bytes)
    P history:{a}:sent             zset   the same of what a sent (capped apart)
    P history:{a}[:sent]:bytes     string total length of the members of that history
    P history:{a}:senders          hash   sender -> its entries in history:{a} (fairness)
    P unseen:{a}                   set    agents that never connected which a has mail
                                          waiting for (capped per sender)
    P audit:burst:{a}:{action}     string refusals of a's action this minute (sampling)
    P status:{id}                  hash   status, attempts, timestamps, reason, error...
    P delivered:{id}               set    agents a message was delivered to (idempotency)
    P acked:{id}                   set    agents that acked it (`acked` once all of them)
    P dedup:key:{a}:{key}          string id the sender's dedup key stands for, a lease
                                          until the broker confirmed (scripts.fragments:
                                          DEDUP_RECORDS_LUA); expires after the dedup window
    P dedup:id:{id}                string who owns the id ("final|<sender>", or a lease);
                                          expires after the dedup window
    P subs:{a}                     hash   topic -> JSON filters of agent a
    P topic:{t}                    hash   agent -> JSON filters (the delivery-time index)
    P topics                       set    topics that have subscribers
    P reply:{a}:{correlation id}   string id of the latest answer to a's request from the agent
                                          it was sent to (any, for topic and broadcast)
                                          (per recipient: mail to others naming it is not)
    P handling:{id}:{agent}        string handler runs started (catches handlers that crash
                                          the process, which Celery would redeliver forever)
    P buried:{a}:{id}              string digest of a worker agent's message that died, out of
                                          its inbox until a replay puts it back (expires
                                          with its status)
    P readied:{a}:{id}             string the replay count last readied for a (an older
                                          copy of its dead letter is stale)
    P audit                        stream capped audit trail
    P processes                    zset   "<kind>:<host>:<pid>" -> last announced ms
    P process_keys                 hash   "<kind>:<host>:<pid>" -> JSON of its key ids and
                                          fingerprints (bus.keyring)
    P lock:dead_letters            string one dead-letter reader at a time (redis-py lock)
    P rate:sent:{sec}              string messages accepted in that second (expires)
    P rate:delivered:{sec}         string deliveries in that second (expires)
    P rate:{a}                     hash   token bucket state
    P events:inbox:{a}             pub/sub channel: a message landed in a's inbox
    P events:reply:{a}:{corr}      pub/sub channel: an answer to a's request landed
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InboxKeys:
    ready: str
    leased: str
    body: str
    meta: str
    pending: str  # admitted for this inbox, not delivered yet (counts toward its cap)
    senders: str  # messages it holds per sender (a sender's share of it)

    def all(self) -> list[str]:
        """The four keys of the messages themselves (READ's and ACK's)."""
        return [self.ready, self.leased, self.body, self.meta]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    @property
    def agents(self) -> str:
        return f"{self.prefix}agents"

    @property
    def ghosts(self) -> str:
        return f"{self.prefix}ghosts"

    @property
    def unconfirmed(self) -> str:
        return f"{self.prefix}unconfirmed"

    @property
    def unconfirmed_wires(self) -> str:
        return f"{self.prefix}unconfirmed:wires"

    @property
    def worker_agents(self) -> str:
        return f"{self.prefix}worker_agents"

    @property
    def processes(self) -> str:
        return f"{self.prefix}processes"

    @property
    def process_keys(self) -> str:
        return f"{self.prefix}process_keys"

    @property
    def dead_letters_lock(self) -> str:
        return f"{self.prefix}lock:dead_letters"

    def agent_seen(self, agent: str) -> str:
        return f"{self.prefix}agent:{{{agent}}}:seen"

    def inbox(self, agent: str) -> InboxKeys:
        base = f"{self.prefix}inbox:{{{agent}}}"
        return InboxKeys(
            f"{base}:ready",
            f"{base}:leased",
            f"{base}:body",
            f"{base}:meta",
            f"{base}:pending",
            f"{base}:senders",
        )

    @property
    def inbox_seq(self) -> str:
        return f"{self.prefix}inbox:seq"

    def history(self, agent: str, *, sent: bool = False) -> str:
        """What `agent` received, or (`sent`) what it sent: kept apart, so mail flooding
        into an agent can never evict the history of what it sent itself."""
        return f"{self.prefix}history:{{{agent}}}" + (":sent" if sent else "")

    def history_bytes(self, agent: str, *, sent: bool = False) -> str:
        return f"{self.history(agent, sent=sent)}:bytes"

    def history_senders(self, agent: str) -> str:
        """Entries per sender in what `agent` received (its history's fairness)."""
        return f"{self.history(agent)}:senders"

    def histories(self, agent: str) -> list[tuple[str, str]]:
        """(history, its byte count) for both halves of an agent's history."""
        return [
            (self.history(agent, sent=s), self.history_bytes(agent, sent=s)) for s in (False, True)
        ]

    def unseen(self, sender: str) -> str:
        return f"{self.prefix}unseen:{{{sender}}}"

    def audit_burst(self, agent: str, action: str) -> str:
        return f"{self.prefix}audit:burst:{{{agent}}}:{action}"

    def status(self, message_id: str) -> str:
        return f"{self.prefix}status:{message_id}"

    def delivered(self, message_id: str) -> str:
        return f"{self.prefix}delivered:{message_id}"

    def acked(self, message_id: str) -> str:
        return f"{self.prefix}acked:{message_id}"

    def dedup(self, sender: str, key: str) -> str:
        return f"{self.prefix}dedup:key:{{{sender}}}:{key}"

    def dedup_id(self, message_id: str) -> str:
        return f"{self.prefix}dedup:id:{message_id}"

    def subscriptions(self, agent: str) -> str:
        return f"{self.prefix}subs:{{{agent}}}"

    def topic(self, topic: str) -> str:
        return f"{self.prefix}topic:{topic}"

    @property
    def topics(self) -> str:
        return f"{self.prefix}topics"

    def handling(self, message_id: str, agent: str) -> str:
        return f"{self.prefix}handling:{message_id}:{agent}"

    def buried(self, agent: str, message_id: str) -> str:
        return f"{self.prefix}buried:{{{agent}}}:{message_id}"

    def readied(self, agent: str, message_id: str) -> str:
        return f"{self.prefix}readied:{{{agent}}}:{message_id}"

    def reply(self, agent: str, correlation_id: str) -> str:
        """The latest message for `agent` answering `correlation_id` (a request's id): kept
        per recipient, so mail to others that names the id never reaches this pointer."""
        return f"{self.prefix}reply:{{{agent}}}:{correlation_id}"

    def rate_bucket(self, kind: str, second: int) -> str:
        return f"{self.prefix}rate:{kind}:{second}"

    @property
    def audit(self) -> str:
        return f"{self.prefix}audit"

    def rate(self, agent: str) -> str:
        return f"{self.prefix}rate:{{{agent}}}"

    def inbox_channel(self, agent: str) -> str:
        return f"{self.prefix}events:inbox:{agent}"

    def reply_channel(self, agent: str, correlation_id: str) -> str:
        return f"{self.prefix}events:reply:{agent}:{correlation_id}"
