from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("project.demo.urls")),
    # DEBUG only: runserver serves static files itself, a bare `daphne project.asgi` does not.
    *staticfiles_urlpatterns(),
]
