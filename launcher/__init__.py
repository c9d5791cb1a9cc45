"""Everything about running models somewhere: configs, rendezvous, runtime, sweeps, schedulers, fits."""
