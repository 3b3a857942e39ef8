"""The ``expplatform`` command: database, users, keys, experiments, reports, and the
service itself (`serve`: the web and the full-model fit `worker`s).

Built on Flask's CLI so every command runs inside a configured app (the same
settings and database as the service).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click
from click.core import ParameterSource
from flask.cli import FlaskGroup, ScriptInfo, with_appcontext
from sqlalchemy import select

from .bundled import bundled_dir, check_analysis

check_analysis()  # before anything imports `analysis`: a foreign one is a clear error, not a puzzle

from . import auth, definitions, experiments, journey_definitions, journeys, migrations
from .db import get_db
from .errors import DomainError
from .models import ApiKey, User
from .warehouse import sources as warehouse_sources


def _create_app():
    from . import create_app

    # Migrations must run on an unmigrated database, so the CLI never refuses to start.
    return create_app({"check_migrations": False})


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=False, add_version_option=False)
def main() -> None:
    """Manage an expplatform installation."""


# -- database ------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Schema migrations (Alembic)."""


@db.command("upgrade")
@click.argument("revision", default="head")
@with_appcontext
def db_upgrade(revision: str) -> None:
    """Migrate the database up to REVISION (default: the latest)."""
    engine = get_db().engine
    migrations.upgrade(engine, revision)
    click.echo(f"database at revision {migrations.current_revision(engine)}")


@db.command("downgrade")
@click.argument("revision")
@with_appcontext
def db_downgrade(revision: str) -> None:
    """Migrate the database down to REVISION ('base' removes every table)."""
    engine = get_db().engine
    migrations.downgrade(engine, revision)
    click.echo(f"database at revision {migrations.current_revision(engine)}")


@db.command("current")
@with_appcontext
def db_current() -> None:
    """Print the database's revision and the latest one."""
    click.echo(f"current: {migrations.current_revision(get_db().engine)}  head: {migrations.head_revision()}")


# -- users and keys ------------------------------------------------------------------


@main.group()
def users() -> None:
    """Web accounts."""


@users.command("create")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(auth.ROLES), required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@with_appcontext
def users_create(email: str, role: str, password: str) -> None:
    """Create a web login."""
    try:
        with get_db().write() as session:
            user = auth.create_user(session, email, password, role)  # type: ignore[arg-type]
            click.echo(f"created {user.role} {user.email}")
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except DomainError as exc:  # e.g. the e-mail is taken: one line, never a traceback
        _fail(exc.message)


@users.command("list")
@with_appcontext
def users_list() -> None:
    """List the accounts: e-mail, role, state and last login."""
    with get_db().sessionmaker() as session:
        rows = [
            (
                user.email,
                user.role,
                "active" if user.active else "deactivated",
                f"{user.last_login_at:%Y-%m-%d %H:%M} UTC" if user.last_login_at else "never",
            )
            for user in session.scalars(select(User).order_by(User.email))
        ]
    header = ("EMAIL", "ROLE", "STATE", "LAST LOGIN")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])


@users.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(auth.ROLES))
@with_appcontext
def users_set_role(email: str, role: str) -> None:
    """Give the account EMAIL the role ROLE (it applies to its open sessions at once)."""
    try:
        with get_db().write() as session:
            user = auth.find_user(session, email)
            changed = auth.set_role(session, user, role)
            email = user.email
    except DomainError as exc:
        _fail(exc.message)
    click.echo(f"{email} is now {auth.a_role(role)}" + ("" if changed else " (unchanged)"))


@users.command("reset-password")
@click.argument("email")
@click.option("--prompt", is_flag=True, help="Type the new password instead of getting a generated one.")
@with_appcontext
def users_reset_password(email: str, prompt: bool) -> None:
    """Give the account EMAIL a new password and log out its sessions. The generated
    password is printed once, as the last line."""
    chosen = click.prompt("New password", hide_input=True, confirmation_prompt=True) if prompt else None
    try:
        with get_db().write() as session:
            user = auth.find_user(session, email)
            if chosen is None:
                password = auth.reset_password(session, user)
            else:
                auth.change_password(session, user, chosen)
            email = user.email
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except DomainError as exc:
        _fail(exc.message)
    if chosen is not None:
        click.echo(f"password of {email} changed; its sessions are logged out")
        return
    click.echo(f"new password of {email} (shown once; its sessions are logged out):")
    click.echo(password)


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 1: an expected failure, never a traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


@main.group()
def keys() -> None:
    """API keys for client apps (client scope) and automation (admin scope)."""


@keys.command("create")
@click.option("--scope", type=click.Choice(auth.SCOPES), required=True)
@click.option("--name", required=True)
@with_appcontext
def keys_create(scope: str, name: str) -> None:
    """Create a key; the key itself is printed once, as the last line."""
    with get_db().write() as session:
        record, plaintext = auth.create_api_key(session, scope, name, created_by="cli")  # type: ignore[arg-type]
        click.echo(f"created {scope} key {record.prefix}… named {name!r}; store it now, it is not shown again:")
    click.echo(plaintext)


@keys.command("list")
@with_appcontext
def keys_list() -> None:
    """List keys by prefix (the keys themselves are not stored)."""
    with get_db().sessionmaker() as session:
        for record in session.scalars(select(ApiKey).order_by(ApiKey.id)):
            state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
            click.echo(f"{record.prefix}  {record.scope:<6}  {state:<24}  {record.name}")


@keys.command("revoke")
@click.argument("prefix")
@with_appcontext
def keys_revoke(prefix: str) -> None:
    """Revoke the key whose prefix (as listed) is PREFIX."""
    with get_db().write() as session:
        record = auth.revoke_api_key(session, prefix)
    if record is None:
        click.echo(f"no key with prefix {prefix}", err=True)
        sys.exit(1)
    click.echo(f"revoked {prefix}")


# -- journeys ------------------------------------------------------------------------


@main.group("journeys")
def journeys_group() -> None:
    """Journey definitions (files with kind = "journey", applied by `experiments apply`)."""


@journeys_group.command("list")
@with_appcontext
def journeys_list() -> None:
    """List journeys by key: stages, questions, personas and name."""
    with get_db().sessionmaker() as session:
        for journey in journeys.list_journeys(session):
            stages = " > ".join(stage.key for stage in journey.stages)
            counts = f"{len(journey.questions)}q {len(journey.personas)}p"
            click.echo(f"{journey.key:<24} {counts:<8} {stages}  {journey.name}")


@journeys_group.command("export")
@click.argument("key")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout)."
)
@with_appcontext
def journeys_export(key: str, output: Path | None) -> None:
    """Write journey KEY as a definition file that `experiments apply` reads back unchanged."""
    with get_db().sessionmaker() as session:
        try:
            journey = journeys.get_journey(session, key)
        except DomainError as exc:
            click.echo(exc.message, err=True)
            sys.exit(1)
        text = journey_definitions.journey_toml(journeys.journey_definition_of(journey))
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


# -- experiments ---------------------------------------------------------------------


@main.group("experiments")
def experiments_group() -> None:
    """Experiment and journey definitions as TOML files (see experiments/*.toml)."""


@experiments_group.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@with_appcontext
def experiments_apply(paths: tuple[Path, ...]) -> None:
    """Create journeys and experiments from PATHS (files, or folders of *.toml), or
    update journeys and draft experiments to match: warehouse sources and journeys
    first, then experiments; all or nothing. A file is a journey when it says
    kind = "journey", a warehouse source when it says kind = "warehouse" (checked
    against the warehouse unless it says check = false; url_env names the
    environment variable holding its URL). Prints what changed."""
    try:
        loaded = journey_definitions.load_files(paths)
        prepared = warehouse_sources.prepare_files(loaded.warehouses)  # reads the warehouses: outside the write
        with get_db().write() as session:
            sourced = [warehouse_sources.apply_source(session, source, "cli") for source in prepared]
            applied = [journeys.apply_journey(session, definition, "cli") for _, definition in loaded.journeys]
            results = [experiments.apply_definition(session, definition, "cli") for _, definition in loaded.experiments]
    except definitions.DefinitionFileError as exc:
        click.echo("\n".join(exc.problems) + "\nnothing applied", err=True)
        sys.exit(1)
    except DomainError as exc:
        click.echo(f"{exc.message}\nnothing applied", err=True)
        sys.exit(1)
    for stored in sourced:
        detail = f": {', '.join(stored.changes)}" if stored.changes else ""
        click.echo(f"{stored.action} warehouse source {stored.source.key}{detail}")
        for notice in stored.notices:
            click.echo(f"  note: {notice}")
    for done in applied:
        detail = f": {', '.join(done.changes)}" if done.changes else ""
        click.echo(f"{done.action} journey {done.journey.key}{detail}")
        for notice in done.notices:
            click.echo(f"  note: {notice}")
    for saved in results:
        experiment = saved.experiment
        detail = f": {', '.join(saved.changes)}" if saved.changes else f" ({experiment.status})"
        click.echo(f"{saved.action} {experiment.key}{detail}")
        for notice in saved.notices if saved.action != "unchanged" else ():
            click.echo(f"  note: {notice}")


@experiments_group.command("export")
@click.argument("key")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout)."
)
@with_appcontext
def experiments_export(key: str, output: Path | None) -> None:
    """Write experiment KEY as a definition file that `apply` reads back unchanged."""
    with get_db().sessionmaker() as session:
        try:
            text = definitions.dump_toml(experiments.export_definition(experiments.get_experiment(session, key)))
        except DomainError as exc:
            click.echo(exc.message, err=True)
            sys.exit(1)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


@experiments_group.command("list")
@click.option("--status", type=click.Choice(experiments.STATUSES), multiple=True)
@click.option("--stage", help="Only experiments testing this stage.")
@with_appcontext
def experiments_list(status: tuple[str, ...], stage: str | None) -> None:
    """List experiments, newest first."""
    with get_db().sessionmaker() as session:
        page = experiments.list_experiments(session, statuses=status, stage=stage, per_page=1_000_000)
        for experiment in page.items:
            variants = ",".join(variant.key for variant in experiment.variants)
            columns = (experiment.key.ljust(32), experiment.status.ljust(8), experiment.target_stage.ljust(16))
            click.echo(f"{' '.join(columns)} {variants:<24} {experiment.name}")


# -- events ---------------------------------------------------------------------------


@main.group("events")
def events_group() -> None:
    """Stored events and what ingest derives from them."""


@events_group.command("rebuild")
@with_appcontext
def events_rebuild() -> None:
    """Recompute every experiment's outcomes and counters, and every journey's
    counters (the journey map), from the stored events and exposures.

    Run after migration 0003 (the journey counters start empty) or to repair the
    counters. One transaction: ingest waits for it (on PostgreSQL a batch that waits
    too long answers 503 and the client retries), and nothing changes if it fails."""
    from .ingest import rebuild_everything

    with get_db().write() as session:
        summary = rebuild_everything(session)
    for key, (rows, customers) in summary.experiments.items():
        click.echo(f"experiment {key}: {rows} outcome rows, {customers} customer outcomes counted")
    for key, (rows, customers) in summary.journeys.items():
        click.echo(f"journey {key}: {rows} journey outcome rows, {customers} customer outcomes counted")
    made = f"{len(summary.experiments)} experiment(s) and {len(summary.journeys)} journey(s)"
    click.echo(f"rebuilt {made} from the stored events")


# -- warehouse ----------------------------------------------------------------------


@main.group("warehouse")
def warehouse_group() -> None:
    """Warehouse experiments' statistics (computed in the warehouse)."""


@warehouse_group.command("refresh")
@click.argument("key")
@with_appcontext
def warehouse_refresh(key: str) -> None:
    """Compute experiment KEY's statistics in its warehouse now (the fit worker does
    it in the background) and store them for its reports."""
    from .warehouse.refresh import refresh

    try:
        outcome = refresh(get_db(), key)
    except LookupError as exc:
        _fail(str(exc.args[0]))
    if outcome.error is not None:
        _fail(f"{key}: {outcome.error}")
    click.echo(f"{key}: {outcome.cells} cells computed in the warehouse in {outcome.seconds:.2f} s")


@warehouse_group.command("export")
@click.argument("key")
@with_appcontext
def warehouse_export(key: str) -> None:
    """Copy experiment KEY's new exposures into its warehouse's exposures table."""
    from .warehouse.refresh import export_exposures

    with get_db().sessionmaker() as session:
        experiment = experiments.get_experiment(session, key)
        if experiment.warehouse_source is None:
            _fail(f"experiment {key!r} has no warehouse source")
        limit = get_db().settings.warehouse_memory_limit_mb
        written, _last = export_exposures(session, experiment, experiment.warehouse_source, memory_limit_mb=limit)
    click.echo(f"{key}: {written} exposure(s) written to {experiment.warehouse_source.exposures_table}")


# -- reports ------------------------------------------------------------------------


@main.command("report")
@click.argument("key")
@click.option(
    "--format", "output_format", type=click.Choice(["table", "json", "csv", "html"]), default="table", show_default=True
)
@click.option("--segment", help="Break down by this exposure attribute (persona, platform, country...).")
@click.option("--credible-level", type=float, help="Width of the credible intervals (default: the experiment's).")
@click.option("--full-model", is_flag=True, help="Fit the full (PyMC) model first, with a progress bar, and store it.")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="File to write (default: stdout)."
)
@with_appcontext
def report_command(
    key: str,
    output_format: str,
    segment: str | None,
    credible_level: float | None,
    full_model: bool,
    output: Path | None,
) -> None:
    """Print the lift report of experiment KEY."""
    import json

    from flask import current_app

    from .aggregation import experiment_stats
    from .jobs import FitParams, get_runner
    from .reports.build import build_report
    from .reports.decisions import check_full_model
    from .reports.options import ReportOptions
    from .reports.render import report_dict, to_csv
    from .reports.table import format_table
    from .reports.views import report_rows

    try:
        options = ReportOptions.parse({"segment": segment, "credible_level": credible_level})
        if full_model:
            with get_db().sessionmaker() as session:
                check_full_model(experiment_stats(session, experiments.get_experiment(session, key)))
            job = _fit_with_progress(
                get_runner(current_app), key, FitParams.defaults(current_app.extensions["settings"])
            )
            click.echo(f"full model: fit #{job.id} {job.status}" + (f": {job.error}" if job.error else ""), err=True)
        with get_db().sessionmaker() as session:
            built = build_report(session, experiments.get_experiment(session, key), options, wait=None)
            if output_format == "json":
                text = json.dumps(report_dict(built), indent=2) + "\n"
            elif output_format == "csv":
                text = to_csv(report_rows(built))
            elif output_format == "html":
                from .web.reports import render_standalone

                text = render_standalone(current_app, built)
            else:
                text = format_table(built)
    except DomainError as exc:
        click.echo(exc.message, err=True)
        sys.exit(1)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}", err=True)


def _fit_with_progress(runner, key: str, params):
    """Run the fit here, drawing a progress bar on stderr (stdout stays the report)."""
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = click.progressbar(length=total, label="fitting the full model", file=sys.stderr)
            bar.__enter__()
        bar.update(done - bar.pos)

    try:
        return runner.run_here(key, "cli", params, progress)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


# -- serving and fit workers ------------------------------------------------------


@main.command("worker")
@click.option("--once", is_flag=True, help="Run the fits queued now, then exit (for cron and tests).")
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="How often an idle worker looks for queued fits.",
)
@with_appcontext
def worker_command(once: bool, poll_seconds: float) -> None:
    """Run queued full-model fits, oldest first, one at a time, until stopped.

    Run one or more beside the web (`expplatform serve` starts one). SIGTERM or
    Ctrl-C stops it; a fit in progress goes back to the queue for the next worker."""
    import logging
    import signal

    from flask import current_app

    from .jobs import get_runner

    try:
        migrations.require_current(get_db().engine)
    except migrations.SchemaOutOfDate as exc:
        raise click.ClickException(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    runner = get_runner(current_app)

    def on_signal(signum: int, _frame: object) -> None:
        runner.request_stop(signal.Signals(signum).name)  # fits run in this (the main) thread

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    click.echo(f"expplatform worker {runner.identity}: running queued full-model fits", err=True)
    try:
        done = runner.serve(poll_seconds=poll_seconds, once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"expplatform worker {runner.identity}: stopped after {done} fit(s)", err=True)


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="gunicorn web workers.")
@click.option("--threads", type=click.IntRange(min=1), default=4, show_default=True, help="Threads per web worker.")
@click.option(
    "--fit-workers",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="`expplatform worker` processes to start (0 when they run elsewhere).",
)
def serve_command(host: str, port: int, workers: int, threads: int, fit_workers: int) -> None:
    """Serve the web (gunicorn) and run full-model fits (`expplatform worker`) side
    by side; Ctrl-C or SIGTERM stops them all."""
    from .serve import ServeOptions, commands, supervise

    options = ServeOptions(host=host, port=port, workers=workers, threads=threads, fit_workers=fit_workers)
    sys.exit(supervise(commands(options)))


# -- demo --------------------------------------------------------------------------


@main.group()
def demo() -> None:
    """The demo installation that `make run` starts."""


DEMO_EMAIL = "demo@example.com"
DEMO_PASSWORD = "demo-password"


@demo.command("setup")
@with_appcontext
def demo_setup() -> None:
    """Create the demo editor login, the demo client key, the demo journey and its
    experiments (``experiments/*.toml``, the experiments as drafts; an iteration as a
    clone of the experiment it follows) on first run; print the credentials every run.

    The demo key is kept in the instance folder (mode 600) only so that later runs
    can print it again; real keys are never stored in plaintext. Demo journeys and
    experiments that exist already are left as they are, whatever has been done to
    them since.
    """
    from flask import current_app

    from .models import Journey, User
    from .simulation import demo as demo_story

    credentials = current_app.extensions["settings"].instance_path / "demo_client_key"
    demo_files = journey_definitions.load_files([bundled_dir("experiments")])
    with get_db().write() as session:
        if session.scalar(select(User).where(User.email == DEMO_EMAIL)) is None:
            auth.create_user(session, DEMO_EMAIL, DEMO_PASSWORD, "editor")
        if not credentials.exists():
            _record, plaintext = auth.create_api_key(session, "client", "demo client app", created_by="demo")
            credentials.parent.mkdir(parents=True, exist_ok=True)
            credentials.write_text(plaintext)
            credentials.chmod(0o600)
        # The journeys first: the experiments belong to them.
        existing_journeys = set(session.scalars(select(Journey.key)))
        made = [
            journeys.create_journey(session, definition, "demo").journey.key
            for _path, definition in demo_files.journeys
            if definition.key not in existing_journeys
        ]
        created = demo_story.create_experiments(session, demo_files.experiments, demo_story.scenario(), "demo")
    click.echo(f"demo login:      {DEMO_EMAIL} / {DEMO_PASSWORD} (editor)")
    click.echo(f"demo client key: {credentials.read_text().strip()}")
    if made:
        click.echo(f"demo journeys created: {', '.join(made)}")
    if created:
        click.echo(f"demo experiments created as drafts: {', '.join(created)}")


@demo.command("seed")
@click.option("--customers", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option(
    "--days", type=click.IntRange(1, 366), default=28, show_default=True, help="Simulated days, to yesterday."
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--force", is_flag=True, help="Backfill even when the demo history is there (it adds nothing twice).")
@with_appcontext
def demo_seed(customers: int, days: int, seed: int, force: bool) -> None:
    """Give the demo its history, once: the demo experiments (`demo setup` first) put
    in their lifecycle states and the customers of the last DAYS days backfilled
    (experiments/scenarios/demo.toml says who they are and what each variant truly
    does; the truth goes to demo-truth.json in the instance folder). A second run
    sees the history there and returns at once."""
    from flask import current_app

    from .simulation import demo as demo_story

    story = demo_story.scenario()
    with get_db().sessionmaker() as session:
        if demo_story.seeded(session, story) and not force:
            click.echo("demo history: there already (simulated; `expplatform demo seed --force` adds nothing twice)")
            return
    truth = current_app.extensions["settings"].instance_path / "demo-truth.json"
    _backfill(story, customers=customers, days=days, seed=seed, create=True, truth_out=truth)


def _backfill(scenario, *, customers: int, days: int, seed: int, create: bool, truth_out: Path) -> None:
    """Backfill ``scenario`` in one write transaction and write its truth."""
    from flask import current_app

    from . import simulation
    from .simulation.backfill import backfill

    options = simulation.Options(customers=customers, days=days, seed=seed, create=create)
    skew = current_app.extensions["settings"].clock_skew_seconds
    try:
        with get_db().write() as session:
            result = backfill(session, scenario, options, clock_skew_seconds=skew, say=lambda line: click.echo(line))
    except simulation.SimulationError as exc:
        click.echo(f"error: {exc} (nothing written)", err=True)
        sys.exit(1)
    for line in result.summary.lines():
        click.echo(line)
    truth_out.parent.mkdir(parents=True, exist_ok=True)
    simulation.write_truth(truth_out, simulation.truth_document(scenario, options, result))
    click.echo(f"true effects written to {truth_out}")


# -- simulation ------------------------------------------------------------------------

HTTP_ONLY = ("url", "key", "admin_key", "concurrency", "max_seconds", "legacy", "yes")


@main.command("simulate")
@click.option("--scenario", default="winner", show_default=True, help="A bundled scenario's name, or a TOML file.")
@click.option("--customers", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--days", type=click.IntRange(1, 366), default=28, show_default=True, help="Simulated days of arrivals.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The service.")
@click.option("--key", help="Client key (default: the demo key in the instance folder, if there is one).")
@click.option("--admin-key", help="Admin key: with --create, or to check the experiments run before starting.")
@click.option(
    "--create",
    is_flag=True,
    help="Create the scenario's missing experiments and start them (through HTTP: with --admin-key).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same customers and event ids.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True, help="Worker threads.")
@click.option(
    "--max-seconds", type=click.FloatRange(min=0, min_open=True), help="Stop taking new customers after this."
)
@click.option(
    "--truth-out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("simulation-truth.json"),
    show_default=True,
    help="Where to write the true rates, mean ratings and lifts used.",
)
@click.option(
    "--legacy",
    is_flag=True,
    help="A service from before journeys: create experiments with stages + satisfaction_scale and send "
    "ratings as metric-less satisfaction events (only the questions on the scenario's legacy_scale).",
)
@click.option("--yes", is_flag=True, help="Run against a service that is not on this machine (loopback) too.")
@click.option(
    "--backfill",
    is_flag=True,
    help="Write into the configured database instead (an operator's path, no HTTP): exposures and events "
    "dated on the simulated days, which end yesterday; experiments started/stopped as the scenario's days "
    "say and marked simulated; outcomes and counters rebuilt.",
)
@click.pass_context
def simulate_command(
    ctx: click.Context,
    scenario: str,
    customers: int,
    days: int,
    url: str,
    key: str | None,
    admin_key: str | None,
    create: bool,
    seed: int,
    concurrency: int,
    max_seconds: float | None,
    truth_out: Path,
    legacy: bool,
    yes: bool,
    backfill: bool,
) -> None:
    """Drive synthetic customers of a journey through a running service's HTTP API
    (assign, then stage outcomes and ratings), with known true effects written to
    --truth-out. Scenarios: experiments/scenarios/*.toml. A re-run with the same seed
    adds nothing (the same ids: duplicates only).

    With --backfill, write them into the configured database instead, each on their
    simulated day (through HTTP every exposure is dated now)."""
    from . import simulation
    from .config import default_instance_path

    if backfill:
        given = [
            f"--{n.replace('_', '-')}" for n in HTTP_ONLY if ctx.get_parameter_source(n) != ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(f"{', '.join(given)}: for runs through HTTP, not with --backfill")
        try:
            loaded = simulation.load(scenario)
        except simulation.ScenarioError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        with ctx.ensure_object(ScriptInfo).load_app().app_context():
            _backfill(loaded, customers=customers, days=days, seed=seed, create=create, truth_out=truth_out)
        return

    if not simulation.is_loopback(url) and not yes:
        raise click.UsageError(f"{url} is not on this machine: synthetic data would go to a real service (--yes)")
    if key is None:
        demo_key = default_instance_path() / "demo_client_key"
        if not demo_key.exists():
            raise click.UsageError(f"give a client key with --key (no demo key at {demo_key})")
        key = demo_key.read_text().strip()
    if create and not admin_key:
        raise click.UsageError("--create needs --admin-key")
    try:
        loaded = simulation.load(scenario)
        options = simulation.Options(
            url=url,
            key=key,
            customers=customers,
            days=days,
            seed=seed,
            concurrency=concurrency,
            max_seconds=max_seconds,
            admin_key=admin_key,
            create=create,
            legacy=legacy,
        )
        result = simulation.simulate(loaded, options)
    except (simulation.ScenarioError, simulation.SimulationError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    for line in result.summary.lines():
        click.echo(line, err=True)
    simulation.write_truth(truth_out, simulation.truth_document(loaded, options, result))
    click.echo(f"true effects written to {truth_out}", err=True)
    if result.summary.ended == "interrupted":
        sys.exit(130)  # as a shell reports Ctrl-C


if __name__ == "__main__":
    main()
