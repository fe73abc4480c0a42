"""The reference for bench_core's end-to-end figure: what a user would write with the standard tools.

OpenCV reads the image, scikit-learn's KMeans (lloyd) clusters all its pixels from the given
initial centroids for a fixed number of iterations, OpenCV writes the image in its K colours.

Usage: python bench/reference_sklearn.py IMAGE CLUSTERS_FILE OUT.png ITERATIONS
"""

import sys

import cv2
import numpy as np
from sklearn.cluster import KMeans


def main(image, clusters, out, iterations):
    init = np.loadtxt(clusters, ndmin=2)
    init = init[np.argsort(init[:, 0]), 1:]
    bgr = cv2.imread(image)
    km = KMeans(len(init), init=init, n_init=1, max_iter=int(iterations), tol=0.0, algorithm="lloyd")
    km.fit(bgr.reshape(-1, 3).astype(np.float64))
    palette = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
    cv2.imwrite(out, palette[km.labels_].reshape(bgr.shape))
    print(km.n_iter_)


if __name__ == "__main__":
    main(*sys.argv[1:5])
