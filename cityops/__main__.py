from cityops.app.cli import app

app()
