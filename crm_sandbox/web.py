"""Read-only HTML pages at the addresses the provider's extra links point to, so that a link from a
task run against the sandbox opens something a person can read instead of a 404.

The paths are those of the real web apps, under each service's prefix (the hooks derive the web
address of a connection whose API is not Pipefy's or Pipedrive's cloud from its API URL):

- Pipefy (``/pipefy``): ``/pipes/<id>``, ``/open-cards/<id>``, ``/database_v2/tables/<id>``
- Pipedrive (``/pipedrive``): ``/deal/<id>``, ``/person/<id>``, ``/organization/<id>``,
  ``/activity/<id>``, ``/product/<id>`` and the lists ``/deals/list``, ``/persons/list``,
  ``/organizations/list``, ``/activities/list``, ``/products/list``, ``/leads/inbox``

No authentication (the sandbox's data is made up) and no writes. The pages are not API requests:
they are not counted and no limit applies to them.
"""

from __future__ import annotations

import html
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from crm_sandbox.pipedrive_data import DELETED

LIST_LIMIT = 200  # rows a list page shows; the header gives the full count

# Pipedrive record page path -> entity
PIPEDRIVE_RECORD_PAGES = {"deal": "deals", "person": "persons", "organization": "organizations",
                          "activity": "activities", "product": "products"}
# Pipedrive list page path -> entity
PIPEDRIVE_LIST_PAGES = {"deals/list": "deals", "persons/list": "persons", "organizations/list": "organizations",
                        "activities/list": "activities", "products/list": "products", "leads/inbox": "leads"}
_NAME_KEYS = ("title", "name", "subject", "id")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    text = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}"
        ".note{color:#666}</style></head><body>"
        f"<p class='note'>crm-sandbox: a read-only page standing in for the real web app</p>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(text, status_code=status)


def _not_found(what: str) -> HTMLResponse:
    return _page("Not found", f"<p>{html.escape(what)} does not exist in this sandbox.</p>", status=404)


def _value(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return html.escape(json.dumps(value, ensure_ascii=False, sort_keys=True))
    return html.escape("" if value is None else str(value))


def _fields_table(pairs: list[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_value(v)}</td></tr>" for k, v in pairs)
    return f"<table>{rows}</table>"


def _list_table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _link(href: str, text: Any) -> str:
    return f"<a href='{html.escape(href, quote=True)}'>{_value(text)}</a>"


def _label(record: dict[str, Any]) -> Any:
    return next((record[k] for k in _NAME_KEYS if record.get(k) not in (None, "")), "")


# -- Pipedrive --------------------------------------------------------------------------------------
def pipedrive_routes(service: Any) -> list[BaseRoute]:
    state = service.state

    def record_page(path: str, entity: str) -> Route:
        async def page(request: Request) -> HTMLResponse:
            raw = request.path_params["record_id"]
            table = service.data.tables[entity]
            try:
                rid = int(raw)
            except ValueError:
                return _not_found(f"{path} {raw}")
            with state.lock:
                if not table.exists(rid) or table.flags[rid] & DELETED:
                    return _not_found(f"{path} {rid}")
                record = service.view(entity, rid)
            singular = path.capitalize()
            return _page(f"{singular} {rid}: {_label(record)}",
                         _fields_table(list(record.items()))
                         + f"<p>{_link(f'../{entity}/list', f'All {entity}')}</p>")

        return Route(f"/{path}/{{record_id}}", page, methods=["GET"])

    def list_page(path: str, entity: str) -> Route:
        record_path = next((p for p, e in PIPEDRIVE_RECORD_PAGES.items() if e == entity), None)
        depth = path.count("/") + 1

        async def page(request: Request) -> HTMLResponse:
            table = service.data.tables[entity]
            with state.lock:
                # what the web app lists: neither deleted nor gone
                ids = [rid for rid in table.ids() if not table.flags[rid] & DELETED]
                shown = [service.view(entity, rid) for rid in ids[-LIST_LIMIT:][::-1]]
            rows = []
            for record in shown:
                label = _label(record)
                cell = _link("../" * (depth - 1) + f"{record_path}/{record['id']}", label) if record_path else _value(label)
                rows.append([_value(record.get("id")), cell, _value(record.get("update_time"))])
            note = f"<p>{len(ids)} {entity}; the {len(shown)} last added first.</p>"
            return _page(f"{entity.capitalize()} ({len(ids)})", note + _list_table(["id", "name", "updated"], rows))

        return Route(f"/{path}", page, methods=["GET"])

    routes: list[BaseRoute] = [record_page(p, e) for p, e in PIPEDRIVE_RECORD_PAGES.items()]
    return routes + [list_page(p, e) for p, e in PIPEDRIVE_LIST_PAGES.items()]


# -- Pipefy -----------------------------------------------------------------------------------------
def _pipefy_fields(fields: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(str(f.get("name") or f.get("field", {}).get("label", "")), f.get("value")) for f in fields]


def pipefy_routes(service: Any) -> list[BaseRoute]:
    state = service.state

    async def pipe_page(request: Request) -> HTMLResponse:
        pipe_id = request.path_params["pipe_id"]
        with state.lock:
            data = service.data
            pipe = data.pipes.get(pipe_id)
            if pipe is None:
                return _not_found(f"pipe {pipe_id}")
            phases = [data.phases[p] for p in pipe["phase_ids"] if p in data.phases]
            cards = [data.card_json(c) for c in data.cards.values() if c["pipe_id"] == pipe_id]
        counts: dict[str, int] = {}
        for card in cards:
            phase = card["current_phase"]["name"]
            counts[phase] = counts.get(phase, 0) + 1
        phase_rows = [[_value(ph["name"]), _value(counts.get(ph["name"], 0))] for ph in phases]
        newest = sorted(cards, key=lambda c: c.get("updated_at") or "", reverse=True)[:LIST_LIMIT]
        card_rows = [[_value(c["id"]), _link(f"../open-cards/{c['id']}", c["title"]), _value(c["current_phase"]["name"]),
                      _value(c.get("updated_at"))] for c in newest]
        body = (f"<p>{len(cards)} cards.</p><h2>Phases</h2>" + _list_table(["phase", "cards"], phase_rows)
                + f"<h2>Cards (the {len(newest)} last updated)</h2>"
                + _list_table(["id", "title", "phase", "updated"], card_rows))
        return _page(f"Pipe {pipe_id}: {pipe['name']}", body)

    async def card_page(request: Request) -> HTMLResponse:
        card_id = request.path_params["card_id"]
        with state.lock:
            card = service.data.cards.get(card_id)
            if card is None:
                return _not_found(f"card {card_id}")
            view = service.data.card_json(card)
        pairs: list[tuple[str, Any]] = [("Pipe", view["pipe"]["name"]), ("Phase", view["current_phase"]["name"]),
                                        ("Created", view.get("createdAt")), ("Updated", view.get("updated_at"))]
        body = (_fields_table(pairs + _pipefy_fields(view.get("fields") or []))
                + "<p>" + _link("../pipes/" + str(view["pipe"]["id"]), "The pipe") + "</p>")
        return _page(f"Card {card_id}: {view['title']}", body)

    async def table_page(request: Request) -> HTMLResponse:
        table_id = request.path_params["table_id"]
        with state.lock:
            table = service.data.tables.get(table_id)
            if table is None:
                return _not_found(f"table {table_id}")
            records = [service.data.record_json(r) for r in service.data.records.values()
                       if str(r.get("table_id")) == table_id]
        newest = sorted(records, key=lambda r: r.get("updated_at") or "", reverse=True)[:LIST_LIMIT]
        rows = [[_value(r["id"]), _value(r.get("title")), _value(r.get("updated_at"))] for r in newest]
        body = (f"<p>{len(records)} records; the {len(newest)} last updated first.</p>"
                + _list_table(["id", "title", "updated"], rows))
        return _page(f"Table {table_id}: {table['name']}", body)

    return [
        Route("/pipes/{pipe_id}", pipe_page, methods=["GET"]),
        Route("/open-cards/{card_id}", card_page, methods=["GET"]),
        Route("/database_v2/tables/{table_id}", table_page, methods=["GET"]),
    ]


WEB_ROUTES = {"pipefy": pipefy_routes, "pipedrive": pipedrive_routes}
