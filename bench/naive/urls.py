from django.urls import path
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.naive.models import Submission


class SubmitSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=32_000)


class SubmitView(APIView):
    def post(self, request):
        serializer = SubmitSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        row = Submission.objects.create(prompt=serializer.validated_data["prompt"])
        return Response({"id": str(row.id), "status": row.status}, status=status.HTTP_202_ACCEPTED)


urlpatterns = [path("api/v1/infer", SubmitView.as_view())]
