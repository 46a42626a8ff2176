from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from eventbus.health import health_view
from eventbus.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("project.demo.urls")),
    # Monitoring (README): Prometheus scrapes /metrics, a probe asks /health/eventbus.
    # Neither checks who asks: in production, let only your network reach them.
    path("metrics", metrics_view),
    path("health/eventbus", health_view),
    # Browsers ask every page's site for /favicon.ico, the admin's pages included.
    path("favicon.ico", RedirectView.as_view(url=static("demo/favicon.svg"), permanent=True)),
    # DEBUG only: runserver serves static files itself, a bare `daphne project.asgi` does not.
    *staticfiles_urlpatterns(),
]
