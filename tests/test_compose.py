"""docker-compose.yaml and deploy/: the deployment's structure, and its Hadoop settings
(deploy/hadoop.env) against the dev cluster's (bin/hadoop-dev), property by property.

No Docker engine is needed. When a compose CLI is installed (`docker compose` or `docker-compose`),
`config -q` must accept the file, and the CLI's reading of deploy/hadoop.env must be ours.

The dev cluster's configuration comes from bin/hadoop-dev itself (a Python program, imported as a
module): its `write_conf` writes the XML files into a temporary directory with the script's default
knobs, and the test reads them back.
"""

from __future__ import annotations

import getpass
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(ROOT, "docker-compose.yaml")
ENV_FILE = os.path.join(ROOT, "deploy", "hadoop.env")
ENV_FILE_REF = "deploy/hadoop.env"  # as docker-compose.yaml names it
DEV_SCRIPT = os.path.join(ROOT, "bin", "hadoop-dev")

AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer")
HADOOP_SERVICES = ("namenode", "datanode", "resourcemanager", "nodemanager", "historyserver")
HADOOP_COMMANDS = {"namenode": ["hdfs", "namenode"], "datanode": ["hdfs", "datanode"],
                   "resourcemanager": ["yarn", "resourcemanager"], "nodemanager": ["yarn", "nodemanager"],
                   "historyserver": ["mapred", "historyserver"]}
#: the XML files bin/hadoop-dev writes (log4j.properties aside)
XML_FILES = ("core-site", "hdfs-site", "yarn-site", "mapred-site", "capacity-scheduler")
#: the dev cluster's host (bin/hadoop-dev: HOST = "127.0.0.1")
DEV_HOSTS = ("127.0.0.1", "localhost")
BIND_ALL = "0.0.0.0"

#: Dev properties whose values are paths under the dev dir (.hadoop-dev) or the name of the user
#: who ran bin/hadoop-dev. The compose file must set each of them too, to the value given here
#: (container paths of deploy/hadoop.Dockerfile and the compose volumes; the Airflow user).
PATH_OR_USER_SPECIFIC = {
    "hadoop.tmp.dir": "/tmp/hadoop",  # per container
    "hadoop.http.staticuser.user": "airflow",  # the user Airflow submits jobs and writes WebHDFS as
    "dfs.namenode.name.dir": "file:///data/hdfs/namenode",  # volume hdfs-namenode
    "dfs.datanode.data.dir": "file:///data/hdfs/datanode",  # volume hdfs-datanode
    "yarn.nodemanager.local-dirs": "/data/yarn/local",
    "yarn.nodemanager.log-dirs": "/data/yarn/logs",
    # dev: .hadoop-dev/conf + .hadoop-dev/jars/*; compose: the image's conf dir and jar folders
    "yarn.application.classpath": ",".join(
        ["/opt/hadoop/etc/hadoop"] + [f"/opt/hadoop/share/hadoop/{d}/{s}" for d in ("common", "hdfs", "yarn")
                                      for s in ("*", "lib/*")]),
    "mapreduce.application.classpath":
        "/opt/hadoop/etc/hadoop,/opt/hadoop/share/hadoop/mapreduce/*,/opt/hadoop/share/hadoop/mapreduce/lib/*",
}

#: Properties only the compose deployment sets, and why.
COMPOSE_ONLY = {
    # daemons listen on every interface of their container, clients use the service names
    "dfs.namenode.rpc-bind-host": BIND_ALL,
    "dfs.namenode.http-bind-host": BIND_ALL,
    "yarn.resourcemanager.bind-host": BIND_ALL,
    "yarn.nodemanager.bind-host": BIND_ALL,
    "mapreduce.jobhistory.bind-host": BIND_ALL,
    # Hadoop 3 MR in containers of a Hadoop install (the dev cluster's class path is explicit)
    "yarn.app.mapreduce.am.env": "HADOOP_MAPRED_HOME=/opt/hadoop",
    "mapreduce.map.env": "HADOOP_MAPRED_HOME=/opt/hadoop",
    "mapreduce.reduce.env": "HADOOP_MAPRED_HOME=/opt/hadoop",
}

PROXYUSER = re.compile(r"^hadoop\.proxyuser\.([^.]+)\.(hosts|groups)$")


# --- helpers ---------------------------------------------------------------------------------


def load_hadoop_conf():
    """deploy/hadoop_conf.py as a module (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location("hadoop_conf", os.path.join(ROOT, "deploy", "hadoop_conf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hadoop_conf = load_hadoop_conf()


@pytest.fixture(scope="module")
def compose() -> dict:
    with open(COMPOSE_FILE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)  # merge keys (<<: *anchor) are resolved by PyYAML


@pytest.fixture(scope="module")
def env_pairs() -> list[tuple[str, str]]:
    return hadoop_conf.parse_env_file(ENV_FILE)


@pytest.fixture(scope="module")
def env_conf(env_pairs) -> dict[str, dict[str, str]]:
    return hadoop_conf.settings(env_pairs)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of the service's short-syntax volumes."""
    out = []
    for entry in service.get("volumes") or []:
        assert isinstance(entry, str), f"long volume syntax not expected here: {entry!r}"
        parts = entry.split(":")
        out.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return out


def mount_for(service: dict, target: str) -> tuple[str, str, str] | None:
    return next((m for m in mounts(service) if m[1] == target), None)


def env_files(service: dict) -> list[str]:
    files = service.get("env_file") or []
    return [files] if isinstance(files, str) else list(files)


def read_xml_dir(path: str) -> dict[str, dict[str, str]]:
    conf = {}
    for name in XML_FILES:
        file = os.path.join(path, f"{name}.xml")
        if os.path.exists(file):
            conf[name] = {p.findtext("name"): p.findtext("value") or "" for p in ET.parse(file).getroot()
                          if p.tag == "property"}
    return conf


def host_role(name: str) -> str | None:
    """The compose service a host-bearing property must name."""
    if name == "fs.defaultFS" or name.startswith("dfs.namenode."):
        return "namenode"
    if name.startswith("dfs.datanode."):
        return "datanode"
    if name.startswith("yarn.resourcemanager."):
        return "resourcemanager"
    if name.startswith("yarn.nodemanager."):
        return "nodemanager"
    if name.startswith("mapreduce.jobhistory.") or name == "yarn.log.server.url":
        return "historyserver"
    return None


def normalise_proxyuser(props: dict[str, str]) -> dict[str, str]:
    """hadoop.proxyuser.<user>.X -> hadoop.proxyuser.<user>.X (the user is site-specific); every
    user's value must agree."""
    out = {}
    for name, value in props.items():
        m = PROXYUSER.match(name)
        key = f"hadoop.proxyuser.<user>.{m.group(2)}" if m else name
        assert out.get(key, value) == value, f"{name}: {value!r} differs from another user's {out[key]!r}"
        out[key] = value
    return out


def load_hadoop_dev():
    """bin/hadoop-dev as a module (a script without .py: its loader has to be named)."""
    loader = importlib.machinery.SourceFileLoader("hadoop_dev", DEV_SCRIPT)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("hadoop_dev", loader))
    loader.exec_module(module)
    return module


def dev_cluster_conf(tmp: str) -> dict[str, dict[str, str]]:
    """The XML files bin/hadoop-dev's write_conf writes into the dev dir ``tmp``, with the default
    knobs (the environment's HADOOP_DEV_* do not count), read back."""
    hadoop_dev = load_hadoop_dev()
    hadoop_dev.write_conf(hadoop_dev.Dev({"HADOOP_DEV_DIR": tmp}), java_home="/nonexistent-java-home")
    return read_xml_dir(os.path.join(tmp, "conf"))


def compose_cli() -> list[str] | None:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


# --- services --------------------------------------------------------------------------------


def test_every_service_is_there(compose):
    services = compose["services"]
    for name in ("postgres", *AIRFLOW_SERVICES, *HADOOP_SERVICES):
        assert name in services, f"service {name} missing"
    # LocalExecutor: no Celery worker, no broker
    assert not {"redis", "airflow-worker", "flower"} & set(services)


def test_airflow_services_share_the_settings(compose, env_conf):
    services = compose["services"]
    nn_http_port = int(env_conf["hdfs-site"]["dfs.namenode.http-address"].rsplit(":", 1)[1])
    work_volumes, output_volumes = set(), set()
    for name in AIRFLOW_SERVICES:
        service = services[name]
        env = environment(service)
        assert service["build"]["dockerfile"] == "deploy/airflow.Dockerfile", name
        assert service["image"] == services["airflow-apiserver"]["image"], name
        assert ENV_FILE_REF in env_files(service), f"{name}: the Hadoop client config comes from {ENV_FILE_REF}"

        conn = json.loads(env["AIRFLOW_CONN_WEBHDFS_DEFAULT"])
        assert conn == {"conn_type": "webhdfs", "host": "namenode", "port": nn_http_port, "login": "airflow"}, name

        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres", name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False", name
        # short tasks: the same scheduler settings as bin/airflow; no raised max_map_length needed
        assert float(env["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]) < 1, name
        assert float(env["AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL"]) >= 300, name
        # the report's task instances: a read-only user of the API server, by the connection's login
        report = json.loads(env["AIRFLOW_CONN_KMEANS_AIRFLOW_API"])
        assert (report["host"], report["port"]) == ("airflow-apiserver", 8080), name
        assert f"{report['login']}:viewer" in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","), name
        assert "AIRFLOW__CORE__MAX_MAP_LENGTH" not in env, name
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"], name
        api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        assert (api.hostname, api.port, api.path) == ("airflow-apiserver", 8080, "/execution/"), name
        assert env["KMEANS_STREAMING_PYTHON"] == "/usr/local/bin/python3", name

        dags = mount_for(service, "/opt/airflow/dags")
        assert dags and dags[0] == "./dags", f"{name}: dags/ must be mounted at /opt/airflow/dags"
        # the project comes from its wheel, installed in the image: no source folder mounted or on the path
        assert not mount_for(service, "/opt/airflow/plugins"), f"{name}: the plugin comes from the installed package"
        assert not any(m[0] in (".", "./plugins", "./kmeans_ops") for m in mounts(service)), name
        assert "PYTHONPATH" not in env, name
        images = mount_for(service, "/data/images")
        assert images == ("./data/images", "/data/images", "ro"), name

        work, output = mount_for(service, env["KMEANS_WORK_ROOT"]), mount_for(service, env["KMEANS_OUTPUT_ROOT"])
        assert work and work[0] in compose["volumes"], f"{name}: KMEANS_WORK_ROOT must be on a named volume"
        assert output and output[0] in compose["volumes"], f"{name}: KMEANS_OUTPUT_ROOT must be on a named volume"
        work_volumes.add(work[0])
        output_volumes.add(output[0])
    # every task, whichever container runs it, sees the same local work area and outputs
    assert len(work_volumes) == 1 and len(output_volumes) == 1


def test_hadoop_services(compose, env_conf):
    services = compose["services"]
    for name in HADOOP_SERVICES:
        service = services[name]
        assert service["build"]["dockerfile"] == "deploy/hadoop.Dockerfile", name
        assert service["image"] == services["namenode"]["image"], name
        assert env_files(service) == [ENV_FILE_REF], name
        assert service["command"] == HADOOP_COMMANDS[name], name
        # YARN, JobHistory and WebHDFS hand out these names (tracking URLs, redirects to :9864)
        assert service.get("hostname") == name, f"{name}: hostname must be the service name"
    # first start formats HDFS; the directory is the configured one, on the namenode's volume
    name_dir = env_conf["hdfs-site"]["dfs.namenode.name.dir"].removeprefix("file://")
    assert environment(services["namenode"])["ENSURE_NAMENODE_DIR"] == name_dir
    for service, prop in (("namenode", "dfs.namenode.name.dir"), ("datanode", "dfs.datanode.data.dir")):
        path = env_conf["hdfs-site"][prop].removeprefix("file://")
        volume = [m for m in mounts(services[service]) if path.startswith(m[1].rstrip("/") + "/")]
        assert volume and volume[0][0] in compose["volumes"], f"{service}: {path} must be on a named volume"


def test_published_ports(compose):
    published = {name: {str(p).split(":")[0] for p in service.get("ports") or []}
                 for name, service in compose["services"].items()}
    assert "8080" in published["airflow-apiserver"]
    assert "9870" in published["namenode"]
    assert "8088" in published["resourcemanager"]
    assert "19888" in published["historyserver"]


def test_images_are_pinned_and_consistent(compose):
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as handle:
        airflow_pin = re.search(r"^apache-airflow==(\S+)$", handle.read(), re.M).group(1)
    args = compose["services"]["airflow-apiserver"]["build"]["args"]
    assert args["AIRFLOW_IMAGE"] == f"apache/airflow:{airflow_pin}-python3.11"
    hadoop_image = args["HADOOP_IMAGE"]
    assert compose["services"]["namenode"]["build"]["args"]["HADOOP_IMAGE"] == hadoop_image
    assert re.fullmatch(r"apache/hadoop:\d+\.\d+\.\d+", hadoop_image)
    for dockerfile in ("airflow.Dockerfile", "hadoop.Dockerfile"):
        with open(os.path.join(ROOT, "deploy", dockerfile), encoding="utf-8") as handle:
            text = handle.read()
        assert f"ARG HADOOP_IMAGE={hadoop_image}\n" in text, f"{dockerfile}: default differs from the compose file"
        # the build context is the repository root: everything COPYed must pass its .dockerignore
        with open(os.path.join(ROOT, "deploy", dockerfile + ".dockerignore"), encoding="utf-8") as handle:
            allowed = {line[1:].strip() for line in handle if line.startswith("!")}
        for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
            for source in [word for word in line.split()[:-1] if not word.startswith("--")]:  # --chown=...
                assert source in allowed, f"{dockerfile}: COPY {source} is excluded by its .dockerignore"
                assert os.path.exists(os.path.join(ROOT, source)), f"{dockerfile}: COPY {source}: no such file"
    assert f"ARG AIRFLOW_IMAGE={args['AIRFLOW_IMAGE']}\n" in open(
        os.path.join(ROOT, "deploy", "airflow.Dockerfile"), encoding="utf-8").read()
    for script in ("airflow-entrypoint.sh", "airflow-init.sh", "hadoop_conf.py"):
        assert os.access(os.path.join(ROOT, "deploy", script), os.X_OK), f"deploy/{script} must be executable"


# --- deploy/hadoop.env -----------------------------------------------------------------------


def test_env_file_is_plain(env_pairs):
    """Values that Compose v1 and v2 (and the apache/hadoop image's envtoconf.py, which writes them
    into XML unescaped) all read the same way."""
    key = re.compile(r"^(CORE-SITE|HDFS-SITE|YARN-SITE|MAPRED-SITE|CAPACITY-SCHEDULER)\.XML_[A-Za-z0-9._-]+$")
    seen = set()
    for name, value in env_pairs:
        assert key.match(name), f"{name}: not <FILE>.XML_<property> of a known file"
        assert name not in seen, f"{name} set twice"
        seen.add(name)
        assert value and value == value.strip(), f"{name}: empty value or surrounding blanks"
        for bad in ("$", "#", '"', "'", "<", ">", "&", ": "):
            assert bad not in value, f"{name}: {bad!r} in the value"


def test_env_file_hosts_are_services(compose, env_conf):
    services = compose["services"]
    for file, props in env_conf.items():
        for name, value in props.items():
            for host in re.findall(r"(?:^|//|,)([A-Za-z0-9.-]+):\d+", value):
                assert host == BIND_ALL or services.get(host, {}).get("hostname") == host, \
                    f"{file}: {name}={value}: {host} is not a Hadoop service's host name"
            assert not any(h in value for h in DEV_HOSTS), f"{name}={value}: a loopback address"
            assert ".hadoop-dev" not in value, f"{name}={value}: a dev-cluster path"


def test_renderer_writes_what_the_hadoop_image_writes(tmp_path, env_pairs, env_conf):
    """deploy/hadoop_conf.py (Airflow side), run as the entrypoint runs it (settings in the
    environment), writes the env file's properties; and it maps every variable to the same file and
    property as the apache/hadoop image's envtoconf.py rule (split the name at the first two '_'/'.',
    file = first part lowercased, extension = second, property = the rest)."""
    env = {**os.environ, **dict(env_pairs)}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "hadoop_conf.py"), "--destination",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert read_xml_dir(str(tmp_path)) == env_conf
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.xml" for n in XML_FILES)

    for key, value in env_pairs:
        parts = re.split(r"[_.]", key)
        file, ext = parts[0].lower(), parts[1].lower()
        prop = key[len(file) + len(ext) + 2:].strip()
        assert ext == "xml" and env_conf[file][prop] == value, key


def test_hadoop_settings_match_the_dev_cluster(compose, env_conf, tmp_path):
    dev_dir = str(tmp_path / "hadoop-dev")
    dev_conf = dev_cluster_conf(dev_dir)
    assert set(env_conf) == set(dev_conf) == set(XML_FILES)
    dev_user = getpass.getuser()

    found_specific, problems = set(), []
    for file in XML_FILES:
        dev = normalise_proxyuser(dev_conf[file])
        ours = normalise_proxyuser(env_conf[file])
        for name, dev_value in dev.items():
            if name not in ours:
                problems.append(f"{file}: {name} missing (dev: {dev_value})")
                continue
            value = ours[name]
            if dev_dir in dev_value or (dev_value == dev_user and "user" in name):
                found_specific.add(name)
            if name in PATH_OR_USER_SPECIFIC:
                if value != PATH_OR_USER_SPECIFIC[name]:
                    problems.append(f"{file}: {name}={value}, expected {PATH_OR_USER_SPECIFIC[name]}")
                continue
            if any(h in dev_value for h in DEV_HOSTS):
                role = host_role(name)
                assert role, f"{name}: a dev host in {dev_value!r} but no service role for it"
                assert compose["services"][role].get("hostname") == role
                hosts = (role,) if name.endswith(".hostname") else (role, BIND_ALL)
                template = re.sub(r"127\.0\.0\.1|localhost", "{host}", dev_value)
                if value not in {template.format(host=h) for h in hosts}:
                    problems.append(f"{file}: {name}={value}, expected {template} with host in {hosts}")
                continue
            if value != dev_value:
                problems.append(f"{file}: {name}={value!r}, dev cluster: {dev_value!r}")
        for name in set(ours) - set(dev):
            if name not in COMPOSE_ONLY:
                problems.append(f"{file}: {name} is not set by the dev cluster nor in COMPOSE_ONLY")
            elif ours[name] != COMPOSE_ONLY[name]:
                problems.append(f"{file}: {name}={ours[name]}, expected {COMPOSE_ONLY[name]}")
    assert not problems, "deploy/hadoop.env differs from the dev cluster:\n" + "\n".join(problems)
    # the allow-list is exactly the set of path/user-specific dev properties, nothing more
    assert found_specific == set(PATH_OR_USER_SPECIFIC), (
        f"path/user-specific in the dev config: {sorted(found_specific)}; allow-listed: {sorted(PATH_OR_USER_SPECIFIC)}")
    all_names = {n for f in XML_FILES for n in normalise_proxyuser(env_conf[f])}
    assert set(COMPOSE_ONLY) <= all_names


# --- a compose CLI, when there is one ---------------------------------------------------------


def test_compose_config_is_valid():
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI installed (`docker compose` plugin or `docker-compose`)")
    done = subprocess.run([*cli, "-f", COMPOSE_FILE, "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{' '.join(cli)} config -q failed:\n{done.stdout}\n{done.stderr}"


def test_compose_cli_reads_the_env_file_as_we_do(env_pairs):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI installed (`docker compose` plugin or `docker-compose`)")
    done = subprocess.run([*cli, "-f", COMPOSE_FILE, "config"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)["services"]
    for name in ("namenode", "nodemanager", "airflow-scheduler"):
        env = environment(resolved[name])
        assert {k: v for k, v in env.items() if ".XML_" in k} == dict(env_pairs), name


def test_airflow_image_installs_the_wheel():
    """The Airflow image builds the project's wheel and pip-installs it with the [airflow] extra and
    the constraints; no source folder is copied into the final image."""
    with open(os.path.join(ROOT, "deploy", "airflow.Dockerfile"), encoding="utf-8") as handle:
        text = handle.read()
    final = text[text.rindex("\nFROM "):]
    assert "pip wheel" in text[: text.rindex("\nFROM ")] and "pyproject.toml" in text
    assert re.search(r'pip install .*kmeans_colours-\*\.whl\)\[airflow\]"', final)
    assert "-c /tmp/kmeans-requirements/constraints.txt" in final
    assert not re.search(r"^COPY (?!--from)\S*(kmeans_ops|plugins|dags)", final, re.M)


def test_airflow_init_sets_the_report_users_password(tmp_path):
    """deploy/airflow-init.sh's password file: the admin's password, and for the report's read-only
    user the password of its connection (AIRFLOW_CONN_KMEANS_AIRFLOW_API), so the publish task can
    sign in. Its Python part, run as the script runs it."""

    script = open(os.path.join(ROOT, "deploy", "airflow-init.sh"), encoding="utf-8").read()
    code = re.search(r"<<'PY'\n(.*?)\nPY\n", script, re.S).group(1)
    env = {**os.environ, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "airflow:admin,kmeans_report:viewer",
           "_AIRFLOW_WWW_USER_PASSWORD": "secret-admin",
           "AIRFLOW_CONN_KMEANS_AIRFLOW_API": json.dumps({"conn_type": "http", "login": "kmeans_report",
                                                          "password": "secret-report"})}
    target = tmp_path / "passwords.json"
    subprocess.run([sys.executable, "-", str(target)], input=code, text=True, env=env, check=True, capture_output=True)
    assert json.loads(target.read_text()) == {"airflow": "secret-admin", "kmeans_report": "secret-report"}
