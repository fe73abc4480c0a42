"""K-means colour quantisation as MapReduce: the logic behind the Airflow pipeline.

Stages, one module each: ingest (images -> weighted colour tables and files), initialise (initial
centroids), mapreduce (map / combine / reduce, shared by every engine), engines (local, hadoop),
driver (iterations until convergence), reconstruct (output images and quality figures).
"""

__version__ = "0.1.0"
