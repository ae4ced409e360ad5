"""How the bus is pointed at several hosts: Sentinel URLs, RedBeat's form of them, broker
URL lists, Flower's broker API, and the local stack's names and ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.redis_conn import SentinelTarget
from bus.replication import Replication
from bus.settings import Settings
from msgbus.cluster import ClusterLayout, LocalCluster
from msgbus.commands.processes import management_api as _management_api
from msgbus.services import multi_host
from workers.app import redbeat_connection


def test_a_sentinel_url_names_its_sentinels_service_db_and_password():
    target = SentinelTarget.parse("redis+sentinel://:pw@s1:26379,s2:26380,s3/mymaster/2")
    assert target.hosts == [("s1", 26379), ("s2", 26380), ("s3", 26379)]
    assert (target.service, target.db, target.password) == ("mymaster", 2, "pw")
    assert target.min_other_sentinels == 1  # a lone Sentinel's view is not taken


def test_a_sentinel_url_without_a_service_names_the_setting():
    with pytest.raises(ConfigError, match="MESSAGE_BUS_REDIS_URL"):
        SentinelTarget.parse("redis+sentinel://s1:26379")


def test_redbeat_gets_its_own_sentinel_form_and_rides_out_failovers():
    conf = redbeat_connection("redis+sentinel://127.0.0.1:26401,127.0.0.1:26402/msgbus/0")
    assert conf["redbeat_redis_url"] == "redis-sentinel://"
    options = conf["redbeat_redis_options"]
    assert options["sentinels"] == [("127.0.0.1", 26401), ("127.0.0.1", 26402)]
    assert (options["service_name"], options["db"]) == ("msgbus", 0)
    assert options["retry_period"] > 0
    plain = redbeat_connection("redis://127.0.0.1:6379/0")
    assert plain["redbeat_redis_url"] == "redis://127.0.0.1:6379/0"


def test_flower_gets_the_first_broker_of_a_list_unless_told_otherwise():
    listed = Settings(broker_url="amqp://u:p@h1:5672//;amqp://u:p@h2:5672//")
    assert _management_api(listed) == "http://u:p@h1:15672/api/"
    told = Settings(broker_url=listed.broker_url, broker_api_url="http://u:p@h2:15672/api/")
    assert _management_api(told) == "http://u:p@h2:15672/api/"


def test_broker_lists_and_sentinel_urls_are_multi_host():
    assert multi_host("amqp://a//;amqp://b//")
    assert multi_host("redis+sentinel://s1,s2/m/0")
    assert not multi_host("redis://127.0.0.1:6379/0")


def test_the_local_stack_lists_its_nodes_in_any_order_with_a_vhost():
    stack = LocalCluster(ClusterLayout(state_dir=Path("/nonexistent"), rabbit_port=5701))
    assert stack.broker_url("v", order=[2, 0, 1]) == (
        "amqp://guest:guest@127.0.0.1:5703/v;amqp://guest:guest@127.0.0.1:5701/v;"
        "amqp://guest:guest@127.0.0.1:5702/v"
    )
    env = stack.env()
    assert env["MESSAGE_BUS_QUEUE_TYPE"] == "quorum"
    assert env["MESSAGE_BUS_REDIS_URL"].startswith("redis+sentinel://127.0.0.1:26401,")
    assert [n.name for n in stack.rabbits] == [f"msgbus-c{i}@localhost" for i in (1, 2, 3)]


def test_wait_is_packed_only_when_replicas_are_required():
    assert Replication(0).packed() == b""
    assert Replication(2, 0.25).command == ("WAIT", 2, 250)
    with pytest.raises(ValueError):
        Settings(redis_replica_timeout=5)  # must stay below the 5 s socket timeout
