"""Ray wiring of the job: stages, datasource, datasink, resume and ``run(config) -> RunSummary``.

Ray specifics live in this package only; :mod:`raypipe.pipeline.stages` and
:mod:`raypipe.pipeline.commit` hold the Ray-free logic they call.
"""
