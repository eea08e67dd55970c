from services.common.runner import run_service
from services.ocr.main import DEFINITION

run_service(DEFINITION)
