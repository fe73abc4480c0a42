# syntax=docker/dockerfile:1
# The Hadoop image of docker-compose.yaml (namenode, datanode, resourcemanager, nodemanager,
# historyserver): Apache's Hadoop image + Python 3 with what the Hadoop Streaming tasks import.
#
# The dev cluster (bin/hadoop-dev) runs the Hadoop 3.5.0 jars from Maven Central. This uses
# apache/hadoop:3.4.1, a tag published on Docker Hub (Docker Hub could not be queried when this was
# written, so whether a 3.5.0 image exists is unchecked; use it when it does: docker-compose.yaml
# sets HADOOP_IMAGE in one place, for this image and for the Hadoop client in the Airflow image).
# Hadoop 3.4 runs on the image's own JDK (11).
#
# Unchanged from the base image: its entrypoint (starter.sh) renders $HADOOP_CONF_DIR/*.xml from
# the <FILE>.XML_<property> variables (deploy/hadoop.env) and formats the NameNode on first start
# when ENSURE_NAMENODE_DIR names a directory that does not exist yet.
#
# Build context: the repository root; only constraints.txt is used (see
# deploy/hadoop.Dockerfile.dockerignore).
ARG HADOOP_IMAGE=apache/hadoop:3.4.1
FROM ${HADOOP_IMAGE}

USER root
COPY constraints.txt /tmp/kmeans-constraints.txt
# Python for the streaming tasks (`python -m kmeans_ops.streaming ...`; the engine ships kmeans_ops
# itself with each job, as a zip in the distributed cache). The iterations need NumPy; ingest and
# reconstruction run on the nodes too (kmeans_ops/engines/stages.py: decode, colour tables, redraw,
# thumbnails), so a node needs what they import: NumPy, OpenCV (headless), Pillow, and the `hdfs`
# WebHDFS client (the tasks read and write HDFS through WebHDFS, with no Airflow on the node).
# All at the project's pinned versions (constraints.txt).
# The apache/hadoop 3.4 images are Ubuntu based (apt); the dnf/yum branch covers the older
# Rocky Linux based runner images, whose default python3 is too old for NumPy 2.
# /usr/local/bin/python3 is the interpreter the Airflow side names in the streaming command
# (KMEANS_STREAMING_PYTHON in docker-compose.yaml).
# curl: the compose health checks.
RUN set -eux; \
    if command -v apt-get >/dev/null; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-pip curl; \
        apt-get clean; rm -rf /var/lib/apt/lists/*; \
        py=/usr/bin/python3; \
    else \
        (dnf -y install python3.11 python3.11-pip curl || yum -y install python3.11 python3.11-pip curl); \
        py=/usr/bin/python3.11; \
    fi; \
    PIP_BREAK_SYSTEM_PACKAGES=1 "$py" -m pip install --no-cache-dir numpy opencv-python-headless pillow hdfs -c /tmp/kmeans-constraints.txt; \
    ln -sf "$py" /usr/local/bin/python3; \
    ln -sf "$py" /usr/local/bin/python; \
    /usr/local/bin/python3 -c "import numpy, cv2, PIL, hdfs; print('python', __import__('sys').version.split()[0], 'numpy', numpy.__version__, 'opencv', cv2.__version__)"; \
    mkdir -p /data/hdfs /data/yarn/local /data/yarn/logs; \
    chown -R hadoop:users /data/hdfs /data/yarn

# back to the base image's user: the daemons and the YARN containers run as `hadoop`
USER hadoop
