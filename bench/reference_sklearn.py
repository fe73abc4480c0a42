"""The reference for bench_core's end-to-end figures: what a user would write with the standard tools.

OpenCV reads the image, scikit-learn's KMeans (lloyd) clusters all its pixels, OpenCV writes the
image in its K colours. Either from the given initial centroids for a fixed number of iterations,
or (``INIT`` = ``k-means++:K``) with scikit-learn's defaults: k-means++ (one init, seed 0), its
own max_iter and tol.

Usage: python bench/reference_sklearn.py IMAGE CLUSTERS_FILE|k-means++:K OUT.png ITERATIONS|default
"""

import sys

import cv2
import numpy as np
from sklearn.cluster import KMeans


def main(image, init, out, iterations):
    bgr = cv2.imread(image)
    if init.startswith("k-means++:"):
        km = KMeans(int(init.split(":")[1]), random_state=0, algorithm="lloyd")
    else:
        centroids = np.loadtxt(init, ndmin=2)
        centroids = centroids[np.argsort(centroids[:, 0]), 1:]
        km = KMeans(len(centroids), init=centroids, n_init=1, max_iter=int(iterations), tol=0.0, algorithm="lloyd")
    km.fit(bgr.reshape(-1, 3).astype(np.float64))
    palette = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
    cv2.imwrite(out, palette[km.labels_].reshape(bgr.shape))
    print(km.n_iter_)


if __name__ == "__main__":
    main(*sys.argv[1:5])
