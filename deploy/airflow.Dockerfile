# syntax=docker/dockerfile:1
# The Airflow image of docker-compose.yaml (api-server, scheduler, dag-processor, triggerer, init):
# the official Airflow 3.3.2 image + the project installed as a package (its wheel, built here from
# the checkout, with the [airflow] extra and the pinned constraints) + a JDK + a Hadoop client.
#
# Build context: the repository root (docker-compose.yaml does it); only the files allowed by
# deploy/airflow.Dockerfile.dockerignore are sent. Nothing of the source is copied into the final
# image: it gets the wheel (kmeans_ops, the Airflow provider and plugin, the example DAGs), found by
# Airflow through the package's entry points. docker-compose.yaml mounts dags/ only.

# The Hadoop client is copied from Apache's Hadoop image. The dev cluster (bin/hadoop-dev) runs the
# 3.5.0 jars from Maven Central; apache/hadoop:3.4.1 is a tag published on Docker Hub (Docker Hub
# could not be queried when this was written, so whether a 3.5.0 image exists is unchecked: switch
# HADOOP_IMAGE in docker-compose.yaml when it does). docker-compose.yaml passes the same
# HADOOP_IMAGE to deploy/hadoop.Dockerfile, so client and cluster are one version.
ARG HADOOP_IMAGE=apache/hadoop:3.4.1
ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11

FROM ${HADOOP_IMAGE} AS hadoop

# The wheel: `pip wheel` of the checkout's package files (pyproject.toml, setuptools), as CI builds it.
FROM ${AIRFLOW_IMAGE} AS wheel
COPY --chown=airflow:0 pyproject.toml README.md /tmp/kmeans-src/
COPY --chown=airflow:0 kmeans_ops /tmp/kmeans-src/kmeans_ops
COPY --chown=airflow:0 plugins/kmeans_plugin /tmp/kmeans-src/plugins/kmeans_plugin
COPY --chown=airflow:0 dags /tmp/kmeans-src/dags
RUN pip wheel --no-cache-dir --no-deps /tmp/kmeans-src -w /tmp/kmeans-wheels

FROM ${AIRFLOW_IMAGE}

USER root
# - a JDK for the Hadoop client (`hadoop jar hadoop-streaming-*.jar ...`): Debian 12 ships 17
# - gcc + Kerberos headers: the HDFS provider depends on hdfs[kerberos] -> gssapi, built from
#   source (no Linux wheel), as in bin/setup-system
# mkdir man1: openjdk's post-install script needs it on slim Debian images
RUN set -eux; \
    mkdir -p /usr/share/man/man1; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        openjdk-17-jre-headless gcc libc6-dev libkrb5-dev; \
    apt-get clean; rm -rf /var/lib/apt/lists/*; \
    ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/kmeans-java; \
    /usr/lib/jvm/kmeans-java/bin/java -version

# The Hadoop client: bin/hadoop finds the streaming jar under share/hadoop/tools/lib; the engine
# (kmeans_ops/engines/hadoop.py) uses `$HADOOP_HOME/bin/hadoop jar` when HADOOP_HOME is set.
# etc/hadoop is rewritten at every start by deploy/airflow-entrypoint.sh: writable by group 0
# (the Airflow image runs as an arbitrary uid with gid 0).
COPY --from=hadoop /opt/hadoop /opt/hadoop
RUN set -eux; \
    rm -rf /opt/hadoop/share/doc; \
    chown -R airflow:0 /opt/hadoop/etc/hadoop; chmod -R g+rwX /opt/hadoop/etc/hadoop; \
    mkdir -p /opt/kmeans/work /opt/kmeans/output /opt/kmeans/deploy; \
    chown -R airflow:0 /opt/kmeans; chmod -R g+rwX /opt/kmeans

# JDK 17 flags for the client JVM (the same --add-opens set as bin/hadoop-dev's HADOOP_DEV_JAVA_OPTS;
# Hadoop 3.4 supports 17 only with them).
ENV JAVA_HOME=/usr/lib/jvm/kmeans-java \
    HADOOP_HOME=/opt/hadoop \
    HADOOP_CONF_DIR=/opt/hadoop/etc/hadoop \
    HADOOP_OPTS="-XX:+IgnoreUnrecognizedVMOptions --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.lang.reflect=ALL-UNNAMED --add-opens=java.base/java.io=ALL-UNNAMED --add-opens=java.base/java.net=ALL-UNNAMED --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED --add-opens=java.base/java.util.concurrent=ALL-UNNAMED --add-opens=java.base/java.util.zip=ALL-UNNAMED --add-opens=java.base/java.math=ALL-UNNAMED --add-opens=java.base/java.text=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED --add-opens=java.base/sun.security.util=ALL-UNNAMED --add-opens=java.base/sun.security.x509=ALL-UNNAMED --add-exports=java.base/sun.net.dns=ALL-UNNAMED --add-exports=java.base/sun.net.util=ALL-UNNAMED"
ENV PATH="${PATH}:/opt/hadoop/bin"

COPY deploy/hadoop_conf.py deploy/airflow-entrypoint.sh deploy/airflow-init.sh /opt/kmeans/deploy/
RUN chmod 0755 /opt/kmeans/deploy/*

USER airflow
# The package with its [airflow] extra, every dependency at the project's pinned version
# (constraints.txt pins apache-airflow==3.3.2 itself, the version of the base image, so pip keeps it).
COPY --from=wheel /tmp/kmeans-wheels /tmp/kmeans-wheels
COPY constraints.txt /tmp/kmeans-requirements/
RUN pip install --no-cache-dir "$(ls /tmp/kmeans-wheels/kmeans_colours-*.whl)[airflow]" \
        -c /tmp/kmeans-requirements/constraints.txt \
    && python -c "import kmeans_ops, kmeans_plugin.operators, cv2, airflow.providers.apache.hdfs.hooks.webhdfs; print('ok', kmeans_ops.__version__)" \
    && kmeans-colours quantize --help >/dev/null

ENTRYPOINT ["/usr/bin/dumb-init", "--", "/opt/kmeans/deploy/airflow-entrypoint.sh"]
CMD []
