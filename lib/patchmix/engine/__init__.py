"""The engine: training (`train`), the run cache (`experiment`), the scores (`metrics`,
`scoring`) and the checks that a run agrees with itself (`integrity`).

It imports the layers below it (`patchmix.data`, `patchmix.model`, `patchmix.methods`) and
nothing above: the notebook companion and the command line call it.
"""
