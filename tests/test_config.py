"""Settings: defaults < TOML file < environment < overrides, checked on the way in."""

import dataclasses
from pathlib import Path

import pytest

from pretrade.app.config import (
    ConfigError,
    Settings,
    default_table_path,
    environment_variable,
    load_settings,
    parse_listen,
)
from pretrade.engine.text import is_valid_id


def _write_toml(directory: Path, text: str) -> Path:
    path = directory / "pretrade.toml"
    path.write_text(text)
    return path


def test_defaults_start_an_embedded_redis_on_the_loopback_port():
    settings = load_settings(env={})
    assert settings == Settings()
    assert settings.redis_url is None and settings.embedded_redis
    assert settings.listen == "127.0.0.1:50051"
    assert (settings.max_accounts, settings.max_instruments, settings.max_positions) == (
        16384,
        65536,
        1_048_576,
    )
    assert settings.lock_stripes == 64
    assert settings.demo_book is False
    assert settings.data_dir == ".run"
    assert settings.log_level == "INFO"


def test_settings_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().listen = "0.0.0.0:1"  # type: ignore[misc]


def test_toml_file_under_a_pretrade_table_overrides_defaults(tmp_path):
    path = _write_toml(
        tmp_path,
        """
        [pretrade]
        redis_url = "redis://10.0.0.5:6379/0"
        listen = "0.0.0.0:6000"
        lock_stripes = 128
        demo_book = true
        """,
    )
    settings = load_settings(path, env={})
    assert settings.redis_url == "redis://10.0.0.5:6379/0"
    assert settings.listen == "0.0.0.0:6000"
    assert settings.lock_stripes == 128
    assert settings.demo_book is True
    assert settings.max_accounts == 16384


def test_toml_file_with_top_level_keys_is_read_too(tmp_path):
    path = _write_toml(tmp_path, 'max_accounts = 100\nlog_level = "debug"\n')
    settings = load_settings(str(path), env={})
    assert settings.max_accounts == 100
    assert settings.log_level == "DEBUG"


def test_pretrade_config_env_names_the_file_when_none_is_passed(tmp_path):
    path = _write_toml(tmp_path, "max_instruments = 7\n")
    assert load_settings(env={"PRETRADE_CONFIG": str(path)}).max_instruments == 7


def test_environment_overrides_the_file_and_overrides_beat_the_environment(tmp_path):
    path = _write_toml(tmp_path, 'listen = "127.0.0.1:1000"\nmax_positions = 10\n')
    env = {"PRETRADE_LISTEN": "127.0.0.1:2000", "PRETRADE_MAX_POSITIONS": "20"}
    from_env = load_settings(path, env=env)
    assert (from_env.listen, from_env.max_positions) == ("127.0.0.1:2000", 20)
    from_flags = load_settings(path, env=env, overrides={"listen": "127.0.0.1:3000"})
    assert (from_flags.listen, from_flags.max_positions) == ("127.0.0.1:3000", 20)


def test_every_field_has_its_own_environment_variable():
    env = {
        "PRETRADE_REDIS_URL": "redis://r:1/0",
        "PRETRADE_REDIS_READ_URL": "redis://r-replica:1/0",
        "PRETRADE_PRICE_SOURCE": "TimeSeries",
        "PRETRADE_LISTEN": "[::]:7000",
        "PRETRADE_TABLE_PATH": "/tmp/t.table",
        "PRETRADE_MAX_ACCOUNTS": "1",
        "PRETRADE_MAX_INSTRUMENTS": "2",
        "PRETRADE_MAX_POSITIONS": "3",
        "PRETRADE_LOCK_STRIPES": "4096",
        "PRETRADE_MAX_ORDERS": "5",
        "PRETRADE_MAX_ORDERS_PER_ACCOUNT": "2",
        "PRETRADE_ORDER_EXPIRY_MS": "90000",
        "PRETRADE_PREFAULT_TABLE": "off",
        "PRETRADE_LOCK_TABLE_MEMORY": "on",
        "PRETRADE_MAX_SYNC_LAG_MS": "750",
        "PRETRADE_WORKERS": "2",
        "PRETRADE_STREAM_LISTEN": "[::]:7001",
        "PRETRADE_STREAM_WORKERS": "3",
        "PRETRADE_STREAM_NICE": "0",
        "PRETRADE_MAX_CONCURRENT_RPCS": "64",
        "PRETRADE_MAX_PORTFOLIO_STREAMS": "65",
        "PRETRADE_MAX_ORDER_SESSIONS": "69",
        "PRETRADE_ORDER_SESSION_WINDOW": "70",
        "PRETRADE_MAX_CONTROL_CALLS": "66",
        "PRETRADE_MAX_OPEN_CALLS": "67",
        "PRETRADE_KEEPALIVE_TIME_MS": "30000",
        "PRETRADE_KEEPALIVE_TIMEOUT_MS": "5000",
        "PRETRADE_KEEPALIVE_MIN_PING_INTERVAL_MS": "15000",
        "PRETRADE_MAX_READ_CALLS": "68",
        "PRETRADE_SHUTDOWN_GRACE_MS": "2500",
        "PRETRADE_AUDIT_QUEUE_SIZE": "100",
        "PRETRADE_AUDIT_WHEN_FULL": "Drop",
        "PRETRADE_AUDIT_BEFORE_ANSWER": "off",
        "PRETRADE_AUDIT_RETAIN_MS": "1000",
        "PRETRADE_DATABASE_URL": "postgresql://archiver:pw@db:5432/audit",
        "PRETRADE_ARCHIVE": "yes",
        "PRETRADE_ARCHIVE_CLAIM_IDLE_MS": "4000",
        "PRETRADE_ARCHIVE_METRICS_LISTEN": "127.0.0.1:9465",
        "PRETRADE_DURABLE_DECISIONS": "no",
        "PRETRADE_DEMO_BOOK": "yes",
        "PRETRADE_DEFAULT_CURRENCY": "eur",
        "PRETRADE_DAY_SESSION_END_UTC": "21:30",
        "PRETRADE_DATA_DIR": "/var/lib/pretrade",
        "PRETRADE_LOG_LEVEL": "warning",
        "PRETRADE_LOG_FORMAT": "JSON",
        "PRETRADE_LOG_RATE_LIMIT": "50",
        "PRETRADE_METRICS_LISTEN": "0.0.0.0:9464",
        "PRETRADE_RECONCILE_INTERVAL_SECONDS": "0",
        "PRETRADE_REDIS_USERNAME": "gateway",
        "PRETRADE_REDIS_PASSWORD": "hunter2",
        "PRETRADE_INSECURE": "no",
        "PRETRADE_TLS_CERT": "/etc/pretrade/server.pem",
        "PRETRADE_TLS_KEY": "/etc/pretrade/server.key",
        "PRETRADE_TLS_CLIENT_CA": "/etc/pretrade/clients-ca.pem",
        "PRETRADE_TLS_REQUIRE_CLIENT_CERT": "true",
        "PRETRADE_AUTH": "Tokens",
        "PRETRADE_TOKENS_FILE": "/etc/pretrade/tokens.toml",
        "PRETRADE_DESK_LISTEN": "0.0.0.0:8443",
        "PRETRADE_DESK_GATEWAY": "gateway.example:50051",
        "PRETRADE_DESK_STREAM_GATEWAY": "gateway.example:50052",
        "PRETRADE_DESK_TLS_CA": "/etc/pretrade/ca.pem",
        "PRETRADE_DESK_CLIENT_CERT": "/etc/pretrade/desk.pem",
        "PRETRADE_DESK_CLIENT_KEY": "/etc/pretrade/desk.key",
        "PRETRADE_OWNED_SHARDS": "0-3,9",
        "PRETRADE_SHARD_COUNT": "12",
        "PRETRADE_LEASE_TTL_MS": "1500",
        "PRETRADE_NODE_ID": "risk-a",
        "PRETRADE_ADVERTISED_ADDRESS": "risk-a.example:50051",
    }
    assert set(env) == {environment_variable(f.name) for f in dataclasses.fields(Settings)}
    assert load_settings(env=env) == Settings(
        redis_url="redis://r:1/0",
        redis_read_url="redis://r-replica:1/0",
        price_source="timeseries",
        listen="[::]:7000",
        table_path="/tmp/t.table",
        max_accounts=1,
        max_instruments=2,
        max_positions=3,
        lock_stripes=4096,
        max_orders=5,
        max_orders_per_account=2,
        order_expiry_ms=90_000,
        prefault_table=False,
        lock_table_memory=True,
        max_sync_lag_ms=750,
        workers=2,
        stream_listen="[::]:7001",
        stream_workers=3,
        stream_nice=0,
        max_concurrent_rpcs=64,
        max_portfolio_streams=65,
        max_order_sessions=69,
        order_session_window=70,
        max_control_calls=66,
        max_open_calls=67,
        keepalive_time_ms=30_000,
        keepalive_timeout_ms=5_000,
        keepalive_min_ping_interval_ms=15_000,
        max_read_calls=68,
        shutdown_grace_ms=2500,
        audit_queue_size=100,
        audit_when_full="drop",
        audit_before_answer=False,
        audit_retain_ms=1000,
        database_url="postgresql://archiver:pw@db:5432/audit",
        archive=True,
        archive_claim_idle_ms=4000, archive_metrics_listen="127.0.0.1:9465",
        durable_decisions=False,
        demo_book=True,
        default_currency="EUR",
        day_session_end_utc="21:30:00",
        data_dir="/var/lib/pretrade",
        log_level="WARNING",
        log_format="json",
        log_rate_limit=50,
        metrics_listen="0.0.0.0:9464",
        reconcile_interval_seconds=0,
        redis_username="gateway",
        redis_password="hunter2",
        insecure=False,
        tls_cert="/etc/pretrade/server.pem",
        tls_key="/etc/pretrade/server.key",
        tls_client_ca="/etc/pretrade/clients-ca.pem",
        tls_require_client_cert=True,
        auth="tokens",
        tokens_file="/etc/pretrade/tokens.toml",
        desk_listen="0.0.0.0:8443",
        desk_gateway="gateway.example:50051",
        desk_stream_gateway="gateway.example:50052",
        desk_tls_ca="/etc/pretrade/ca.pem",
        desk_client_cert="/etc/pretrade/desk.pem",
        desk_client_key="/etc/pretrade/desk.key",
        owned_shards="0-3,9",
        shard_count=12,
        lease_ttl_ms=1500,
        node_id="risk-a",
        advertised_address="risk-a.example:50051",
    )


def test_plain_database_url_is_the_fallback_for_pretrade_database_url():
    plain = {"DATABASE_URL": "postgresql://a/b"}
    assert load_settings(env=plain).database_url == "postgresql://a/b"
    both = {**plain, "PRETRADE_DATABASE_URL": "postgres://c/d"}
    assert load_settings(env=both).database_url == "postgres://c/d"


def test_a_database_url_that_is_not_postgresql_is_refused_without_its_password():
    with pytest.raises(ConfigError, match="database_url") as refused:
        Settings(database_url="mysql://root:secret@db/audit")
    assert "secret" not in str(refused.value)
    assert "secret" not in repr(Settings(database_url="postgresql://root:secret@db/audit"))


def test_the_day_session_end_is_a_utc_time_of_day_or_unset():
    assert Settings().day_session_end_utc is None
    assert Settings(day_session_end_utc="20:00").day_session_end_utc == "20:00:00"
    assert Settings(day_session_end_utc="23:59:59").day_session_end_utc == "23:59:59"
    for bad in ("24:00", "8:00", "20:60", "20:00:00.5", "20h", ""):
        with pytest.raises(ConfigError, match="day_session_end_utc"):
            Settings(day_session_end_utc=bad)


def test_default_currency_is_usd_and_must_be_three_letters():
    assert Settings().default_currency == "USD"
    assert Settings(default_currency="chf").default_currency == "CHF"
    for bad in ("US", "USDX", "U$D", ""):
        with pytest.raises(ConfigError, match="default_currency.*ISO 4217"):
            Settings(default_currency=bad)


def test_the_node_name_is_node_id_or_the_host_and_port_and_always_a_valid_id():
    assert Settings(node_id="risk-a").node_name(7001) == "risk-a"
    derived = Settings(listen="127.0.0.1:7001").node_name()
    assert derived.endswith("-7001") and is_valid_id(derived.encode())
    assert Settings(listen="127.0.0.1:0").node_name(41234).endswith("-41234")
    with pytest.raises(ConfigError, match="node_id"):
        Settings(node_id="a{b}")


def test_audit_when_full_is_reject_or_drop():
    assert Settings().audit_when_full == "reject"
    with pytest.raises(ConfigError, match="audit_when_full"):
        Settings(audit_when_full="block")


def test_a_redis_cluster_url_of_seed_nodes_is_accepted_and_its_password_masked(tmp_path):
    from pretrade.app.config import redacted_url
    from pretrade.state.connection import parse_cluster_url

    url = "redis+cluster://ops:s%40cret@10.0.0.5:7000,10.0.0.6:7001"
    settings = load_settings(env={"PRETRADE_REDIS_URL": url})
    assert settings.redis_url == url and not settings.embedded_redis
    assert parse_cluster_url(url) == ([("10.0.0.5", 7000), ("10.0.0.6", 7001)], "ops", "s@cret")
    assert "s%40cret" not in redacted_url(url)


def test_plain_redis_url_is_the_fallback_for_pretrade_redis_url():
    assert load_settings(env={"REDIS_URL": "redis://a:1/0"}).redis_url == "redis://a:1/0"
    both = {"REDIS_URL": "redis://a:1/0", "PRETRADE_REDIS_URL": "redis://b:2/0"}
    assert load_settings(env=both).redis_url == "redis://b:2/0"


def test_an_empty_environment_variable_counts_as_unset():
    settings = load_settings(env={"PRETRADE_REDIS_URL": "", "PRETRADE_MAX_ACCOUNTS": ""})
    assert settings.redis_url is None
    assert settings.max_accounts == 16384


def test_none_overrides_are_flags_that_were_not_given():
    settings = load_settings(
        env={"PRETRADE_LISTEN": "127.0.0.1:2000"},
        overrides={"listen": None, "demo_book": True, "table_path": Path("/tmp/x")},
    )
    assert settings.listen == "127.0.0.1:2000"
    assert settings.demo_book is True
    assert settings.table_path == "/tmp/x"


def test_unknown_toml_key_is_named_in_the_error(tmp_path):
    path = _write_toml(tmp_path, "[pretrade]\nmax_acounts = 5\n")
    with pytest.raises(ConfigError, match=r"max_acounts=5 .*unknown setting"):
        load_settings(path, env={})


def test_keys_beside_the_pretrade_table_are_refused(tmp_path):
    path = _write_toml(tmp_path, 'listen = "127.0.0.1:1"\n[pretrade]\nmax_accounts = 5\n')
    with pytest.raises(ConfigError, match="unknown key.*listen"):
        load_settings(path, env={})


@pytest.mark.parametrize(
    ("toml", "complaint"),
    [
        ('max_accounts = "many"', r"max_accounts='many' .*expected an integer"),
        ("max_accounts = 1.5", r"max_accounts=1\.5 .*expected an integer"),
        ("max_accounts = true", r"max_accounts=True .*expected an integer"),
        ("max_accounts = 0", r"max_accounts=0 .*positive"),
        ("max_positions = -1", r"max_positions=-1 .*positive"),
        ("max_instruments = 2147483648", r"max_instruments=2147483648 .*at most 1073741823"),
        # What the core refuses, config refuses (it once accepted 2**30 and crashed).
        ("max_accounts = 1073741824", r"max_accounts=1073741824 .*at most 1073741823"),
        ("max_orders = 1073741824", r"max_orders=1073741824 .*at most 1073741823"),
        ("workers = 2147483648", r"workers=2147483648 .*below 2\*\*31"),
        ("lock_stripes = 48", r"lock_stripes=48 .*power of two"),
        ("lock_stripes = 8192", r"lock_stripes=8192 .*at most 4096"),
        ('demo_book = "yes"', r"demo_book='yes' .*expected true or false"),
        ("listen = 50051", r"listen=50051 .*expected a string"),
        ('listen = "localhost"', r"listen='localhost' .*HOST:PORT"),
        ('listen = ":50051"', r"listen=':50051' .*HOST:PORT"),
        ('listen = "host:http"', r"listen='host:http' .*not a number"),
        ('listen = "host:70000"', r"listen='host:70000' .*not a number"),
        ('listen = "::1:50051"', r"listen='::1:50051' .*brackets"),
        ('redis_url = "localhost:6379"', r"redis_url='localhost:6379' .*redis://"),
        ('redis_url = "redis+cluster://"', r"redis_url='redis\+cluster://' .*host:port"),
        ('redis_url = "redis+cluster://a:1,b"', r"redis_url=.*seed is host:port, got 'b'"),
        ('log_level = "LOUD"', r"log_level='LOUD' .*DEBUG, INFO"),
        ('data_dir = ""', r"data_dir='' .*path"),
        ('auth = "password"', r"auth='password' .*tokens, none"),
        ('insecure = "yes"', r"insecure='yes' .*expected true or false"),
        ('tls_cert = ""', r"tls_cert='' .*path"),
    ],
)
def test_bad_toml_values_are_named_with_their_source(tmp_path, toml, complaint):
    path = _write_toml(tmp_path, toml + "\n")
    with pytest.raises(ConfigError, match=complaint) as raised:
        load_settings(path, env={})
    assert str(path) in str(raised.value)


@pytest.mark.parametrize(
    ("env", "complaint"),
    [
        ({"PRETRADE_MAX_ACCOUNTS": "1e3"}, r"max_accounts='1e3' .*PRETRADE_MAX_ACCOUNTS"),
        ({"PRETRADE_LOCK_STRIPES": "3"}, r"lock_stripes=3 .*power of two"),
        ({"PRETRADE_DEMO_BOOK": "maybe"}, r"demo_book='maybe' .*true or false"),
        ({"REDIS_URL": "http://h:1"}, r"redis_url='http://h:1' .*REDIS_URL"),
        ({"PRETRADE_STREAM_NICE": "20"}, r"stream_nice=20 .*0\.\.19"),
        ({"PRETRADE_STREAM_LISTEN": "127.0.0.1"}, r"stream_listen=.*HOST:PORT"),
        ({"PRETRADE_LISTEN": "127.0.0.1:7000", "PRETRADE_STREAM_LISTEN": "127.0.0.1:7000"},
         r"stream_listen=127.0.0.1:7000: must differ from listen"),
    ],
)
def test_bad_environment_values_name_the_variable(env, complaint):
    with pytest.raises(ConfigError, match=complaint):
        load_settings(env=env)


def test_passwords_never_appear_in_errors_or_repr():
    with pytest.raises(ConfigError) as raised:
        load_settings(env={"REDIS_URL": "http://user:hunter2@h:1"})
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError) as raised:
        load_settings(env={}, overrides={"redis_password": 12345})
    assert "12345" not in str(raised.value)
    assert "hunter2" not in repr(Settings(redis_password="hunter2"))


def test_unknown_override_is_refused():
    with pytest.raises(ConfigError, match="listen_port"):
        load_settings(env={}, overrides={"listen_port": 1})


def test_missing_or_malformed_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(_write_toml(tmp_path, "listen = \n"), env={})


def test_settings_built_directly_are_checked_too():
    with pytest.raises(ConfigError, match="lock_stripes=6"):
        Settings(lock_stripes=6)
    assert Settings(log_level="error").log_level == "ERROR"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:50051", "127.0.0.1", 50051),
        ("0.0.0.0:1", "0.0.0.0", 1),
        ("[::]:50051", "::", 50051),
        ("localhost:0", "localhost", 0),
    ],
)
def test_listen_address_splits_into_host_and_port(listen, host, port):
    assert parse_listen(listen) == (host, port)
    settings = Settings(listen=listen)
    assert (settings.listen_host, settings.listen_port) == (host, port)


def test_table_path_defaults_to_a_file_named_by_the_listen_port():
    path = Settings(listen="127.0.0.1:6123").resolved_table_path()
    assert path.name == "pretrade-6123.table"
    assert path == default_table_path("127.0.0.1:6123")
    if Path("/dev/shm").is_dir():
        assert path.parent == Path("/dev/shm")


def test_table_path_for_port_zero_is_named_by_the_process():
    assert default_table_path("127.0.0.1:0").name.startswith("pretrade-pid")


def test_explicit_table_path_is_used_as_given():
    assert Settings(table_path="/tmp/mine.table").resolved_table_path() == Path("/tmp/mine.table")


def test_the_account_share_defaults_to_an_eighth_of_the_order_table():
    assert Settings().account_share == Settings().max_orders // 8 == 32_768
    assert Settings(max_orders=5).account_share == 1
    assert Settings(max_orders_per_account=7).account_share == 7
    with pytest.raises(ConfigError, match="max_orders_per_account=0"):
        Settings(max_orders_per_account=0)
    with pytest.raises(ConfigError, match="order_expiry_ms"):
        load_settings(env={"PRETRADE_ORDER_EXPIRY_MS": "soon"})


def test_ownership_is_off_unless_owned_shards_names_shards_of_the_shard_count():
    assert Settings().shards_owned is None
    assert Settings(owned_shards="all", shard_count=4).shards_owned == (0, 1, 2, 3)
    assert Settings(owned_shards="1-2,0").shards_owned == (0, 1, 2)
    for bad in ("16", "x", "", "3-2"):
        with pytest.raises(ConfigError, match="owned_shards"):
            Settings(owned_shards=bad)
    with pytest.raises(ConfigError, match="shard_count"):
        Settings(shard_count=1025)
    with pytest.raises(ConfigError, match="lease_ttl_ms"):
        Settings(lease_ttl_ms=299)
    with pytest.raises(ConfigError, match="node_id"):
        Settings(node_id="a b")
    with pytest.raises(ConfigError, match="advertised_address"):
        Settings(advertised_address="nohost")


@pytest.mark.parametrize("redis_url, read_url", [
    (None, "redis://replica:6379/0"),
    ("redis+cluster://a:7000", "redis://replica:6379/0"),
    ("redis://primary:6379/0", "redis+cluster://a:7000"),
])
def test_a_read_url_needs_a_standalone_primary_and_names_one_replica(redis_url, read_url):
    with pytest.raises(ConfigError, match="redis_read_url"):
        Settings(redis_url=redis_url, redis_read_url=read_url)


def test_a_read_url_that_is_no_redis_url_is_refused_with_the_password_hidden():
    with pytest.raises(ConfigError, match="redis_read_url") as raised:
        Settings(redis_url="redis://p:1/0", redis_read_url="http://u:secret@replica:1")
    assert "secret" not in str(raised.value)
