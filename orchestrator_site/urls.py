from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inference import views
from inference.metrics_http import metrics_view

urlpatterns = [
    path("", views.ChatPageView.as_view(), name="chat"),
    path("dashboard/", views.DashboardView.as_view(), name="dashboard"),
    # Members (accounts without staff rights) sign in to the chat here; staff
    # may too, or through the admin's own login.
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/v1/", include("inference.urls")),
    path("v1/", include("inference.openai_urls")),
    path("health", views.HealthView.as_view(), name="health"),
    path("health/live", views.LivenessView.as_view(), name="health-live"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path(settings.ADMIN_URL, admin.site.urls),
]

handler400 = "inference.errors.json_400"
handler404 = "inference.errors.json_404"
handler500 = "inference.errors.json_500"
