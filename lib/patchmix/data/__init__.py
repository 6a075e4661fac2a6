"""The data layer: data sets behind one interface, their audio and the recipe's features.

`patchmix.data.dataset` is the interface (`DataSet`, the `DATASETS` registry, `recognise`,
the validation split), `patchmix.data.loading` turns a folder into `Data` ready to train on,
`patchmix.data.audio` and `patchmix.data.features` cut and featurise cycles, and
`patchmix.data.synth` writes the synthetic stand-in. Each data set is one module that
registers itself; the imports below are the list of built-in ones, in the order they are
tried (the fallback, ICBHI, last whatever its place). Adding a data set is one file and one
line here (docs/adding-a-dataset.md).

This layer imports only `patchmix.config`, `patchmix.registry` and `patchmix.atomic`.
"""

from patchmix.data import icbhi, sprsound  # noqa: F401 - registers the built-in data sets
