"""`notcat-sort serve`: a local web app to classify a photo, and to review and correct a run.

    app.py          the ASGI app (Starlette): the HTTP API, the pages, the token and host checks
    inference.py    uploads through the CLI's decode, model and decision, batched under load
    review.py       a run's report: where each photo is now, and corrections through the file actions
    corrections.py  corrections kept as training data (cat/, not-cat/, corrections.csv)
    thumbnails.py   thumbnails for the review page
    command.py      the command line: options, the token, uvicorn

Needs the `serve` extra: `pip install 'notcat-sort[serve]'`.
"""
