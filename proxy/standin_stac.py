"""The stand-in's workspace STAC catalogue: a landing page, collections and paged items.

Every document links with absolute URLs on the stand-in's origin, and paging
uses `next` links, as a STAC API does. Item assets live on the workspace's
files host when the stand-in has one. The pages are small, so a client must
follow several `next` links to read everything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

STAC_VERSION = "1.0.0"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/core",
]
# Collection id and how many items it holds.
COLLECTIONS = {"sentinel2-ard": 7, "ndvi-results": 3}
COLLECTIONS_PAGE = 1
ITEMS_PAGE = 3
_EXTENT = {
    "spatial": {"bbox": [[-8.0, 49.9, 1.8, 60.9]]},
    "temporal": {"interval": [["2024-01-01T00:00:00Z", None]]},
}


def add_routes(
    app: web.Application,
    workspace_base: str,
    base_of: Callable[[web.Request], str],
    files_base_of: Callable[[web.Request], str],
) -> None:
    """Add the catalogue under `workspace_base` (a route with `{ws}`).

    `base_of(request)` gives the catalogue's absolute URL for a request, and
    `files_base_of(request)` the workspace's files host URL, or "" for none.
    """

    async def landing(request: web.Request) -> web.Response:
        base = base_of(request)
        workspace = request.match_info["ws"]
        links = [
            {"rel": "self", "href": base, "type": "application/json"},
            {"rel": "root", "href": base, "type": "application/json"},
            {"rel": "data", "href": f"{base}/collections", "type": "application/json"},
            {"rel": "conformance", "href": f"{base}/conformance", "type": "application/json"},
            {"rel": "search", "href": f"{base}/search", "type": "application/geo+json",
             "method": "GET"},
            {"rel": "http://www.opengis.net/def/rel/ogc/1.0/processes",
             "href": f"{base}/processes", "type": "application/json"},
        ]
        links += [
            {"rel": "child", "href": f"{base}/collections/{name}", "type": "application/json"}
            for name in COLLECTIONS
        ]
        return web.json_response(
            {
                "type": "Catalog",
                "stac_version": STAC_VERSION,
                "id": workspace,
                "title": f"Workspace {workspace}",
                "description": f"Catalogue of workspace {workspace} (stand-in)",
                "conformsTo": CONFORMANCE,
                "links": links,
            }
        )

    async def conformance(request: web.Request) -> web.Response:
        return web.json_response({"conformsTo": CONFORMANCE})

    async def collections(request: web.Request) -> web.Response:
        base = base_of(request)
        start, limit = _page(request, COLLECTIONS_PAGE)
        names = list(COLLECTIONS)
        page = [_collection(base, name) for name in names[start : start + limit]]
        links = [{"rel": "self", "href": f"{base}/collections", "type": "application/json"},
                 {"rel": "root", "href": base, "type": "application/json"}]
        if start + limit < len(names):
            links.append(
                {"rel": "next", "type": "application/json",
                 "href": f"{base}/collections?limit={limit}&offset={start + limit}"}
            )
        return web.json_response({"collections": page, "links": links})

    async def collection(request: web.Request) -> web.Response:
        name = request.match_info["collection"]
        if name not in COLLECTIONS:
            return _not_found(f"collection {name} not found")
        return web.json_response(_collection(base_of(request), name))

    async def items(request: web.Request) -> web.Response:
        base = base_of(request)
        name = request.match_info["collection"]
        if name not in COLLECTIONS:
            return _not_found(f"collection {name} not found")
        start, limit = _page(request, ITEMS_PAGE, offset_key="token")
        total = COLLECTIONS[name]
        files = files_base_of(request)
        features = [_item(base, files, name, index) for index in range(start, min(start + limit, total))]
        items_url = f"{base}/collections/{name}/items"
        links = [{"rel": "self", "href": items_url, "type": "application/geo+json"},
                 {"rel": "root", "href": base, "type": "application/json"},
                 {"rel": "collection", "href": f"{base}/collections/{name}",
                  "type": "application/json"}]
        if start + limit < total:
            links.append(
                {"rel": "next", "type": "application/geo+json",
                 "href": f"{items_url}?limit={limit}&token={start + limit}"}
            )
        return web.json_response(
            {"type": "FeatureCollection", "features": features, "links": links,
             "numberMatched": total, "numberReturned": len(features)},
            content_type="application/geo+json",
        )

    async def item(request: web.Request) -> web.Response:
        name = request.match_info["collection"]
        item_id = request.match_info["item"]
        prefix = f"{name}-"
        index = item_id[len(prefix):] if item_id.startswith(prefix) else ""
        if name not in COLLECTIONS or not index.isdigit() or int(index) >= COLLECTIONS[name]:
            return _not_found(f"item {item_id} not found")
        body = _item(base_of(request), files_base_of(request), name, int(index))
        return web.json_response(body, content_type="application/geo+json")

    app.router.add_get(workspace_base, landing)
    app.router.add_get(workspace_base + "/", landing)
    app.router.add_get(workspace_base + "/conformance", conformance)
    app.router.add_get(workspace_base + "/collections", collections)
    app.router.add_get(workspace_base + "/collections/{collection}", collection)
    app.router.add_get(workspace_base + "/collections/{collection}/items", items)
    app.router.add_get(workspace_base + "/collections/{collection}/items/{item}", item)


def _page(request: web.Request, default_limit: int, offset_key: str = "offset") -> tuple[int, int]:
    # A client may repeat a parameter, as pyeodh adds its own `limit` to `next` links. The first wins.
    try:
        limit = int(request.query.getone("limit", default_limit))
        start = int(request.query.getone(offset_key, 0))
    except ValueError:
        raise web.HTTPBadRequest(text="limit and offsets must be integers") from None
    return max(start, 0), min(max(limit, 1), default_limit)


def _collection(base: str, name: str) -> dict[str, Any]:
    url = f"{base}/collections/{name}"
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "id": name,
        "description": f"{name} (stand-in)",
        "license": "proprietary",
        "extent": _EXTENT,
        "links": [
            {"rel": "self", "href": url, "type": "application/json"},
            {"rel": "root", "href": base, "type": "application/json"},
            {"rel": "parent", "href": base, "type": "application/json"},
            {"rel": "items", "href": f"{url}/items", "type": "application/geo+json"},
        ],
    }


def _item(base: str, files: str, collection: str, index: int) -> dict[str, Any]:
    item_id = f"{collection}-{index}"
    url = f"{base}/collections/{collection}/items/{item_id}"
    assets = {}
    if files:
        assets["data"] = {
            "href": f"{files}/files/workspaces-eodhp-staging/{collection}/{item_id}.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
        }
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "id": item_id,
        "collection": collection,
        "geometry": {"type": "Point", "coordinates": [-1.25 + index / 100, 51.75]},
        "bbox": [-1.25 + index / 100, 51.75, -1.25 + index / 100, 51.75],
        "properties": {"datetime": f"2024-01-{index + 1:02d}T11:00:00Z"},
        "links": [
            {"rel": "self", "href": url, "type": "application/geo+json"},
            {"rel": "collection", "href": f"{base}/collections/{collection}",
             "type": "application/json"},
            {"rel": "parent", "href": f"{base}/collections/{collection}",
             "type": "application/json"},
            {"rel": "root", "href": base, "type": "application/json"},
        ],
        "assets": assets,
    }


def _not_found(detail: str) -> web.Response:
    return web.json_response({"title": "NotFound", "detail": detail}, status=404)
