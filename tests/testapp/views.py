"""The JS client's test page, and test-only endpoints that publish in the server process."""

from uuid import UUID

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from eventbus import publish
from eventbus.relay import Relay, redeliver

from .events import ShopEvent


def js_client_page(request: HttpRequest) -> HttpResponse:
    """Renders what an EventBusClient receives; the test subscribes with ``watch()``."""
    return render(request, "testapp/js_client.html")


@csrf_exempt
@require_POST
def publish_order(request: HttpRequest) -> JsonResponse:
    """Publish ``order.deleted`` for ``project_id``; it is broadcast after the commit."""
    event = publish(
        ShopEvent.ORDER_DELETED,
        {"order_id": int(request.POST["order_id"])},
        project_id=UUID(request.POST["project_id"]),
    )
    return JsonResponse({"id": str(event.id)})


@csrf_exempt
@require_POST
def redeliver_event(request: HttpRequest) -> JsonResponse:
    """Send a delivered event again through the relay, as the admin's re-deliver action does."""
    redeliver([UUID(request.POST["id"])])
    report = Relay().run_once()
    return JsonResponse({"delivered": [str(event_id) for event_id in report.delivered]})
