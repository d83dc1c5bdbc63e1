"""Reproducible experiments that measure the ideas behind the network (`birdcnn experiment NAME`)."""
