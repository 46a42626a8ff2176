from django.contrib import admin
from django.contrib.staticfiles.views import serve
from django.urls import path, re_path

from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("js-client/", views.js_client_page),
    path("js-client/publish/", views.publish_order),
    path("js-client/redeliver/", views.redeliver_event),
    # Server processes in browser tests run with DEBUG off and no static files server.
    re_path(r"^static/(?P<path>.*)$", serve, {"insecure": True}),
]
