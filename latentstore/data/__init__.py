"""What training and evaluation read: latent datasets, samplers and resumable loaders, the RGB baselines,
photo discovery and image loading. Nothing here writes a store (that is store/ and convert/)."""
