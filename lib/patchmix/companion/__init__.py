"""The notebook companion: what the numbered notebooks and the run plan use.

The notebooks' knobs (`knobs`), the runs each notebook needs (`notebook_runs`), their setup and
batch execution (`notebooks`), outputs and provenance (`report`), figures (`plots`), the
lessons of notebooks 01, 03, 04 and 06 (`explore`, `lesson`, `latent`, `saliency`,
`realdata`), the frequency calibration (`calibration`), the run plan's pool and export
(`plan`) and the verdict of a reproduction (`reproduction`). It sits above the engine; only
`patchmix.cli` imports it.
"""
