"""Rebuild all of data/sample/ (deterministic: fixed seeds).

Needs the `data` extra (`pip install -e ".[data]"`: scikit-learn, aclsum) and Debian's espeak-ng.

    python data/prepare_sample.py
"""

import prepare_audio
import prepare_digits
import prepare_point_clouds
import prepare_text
import prepare_video

if __name__ == "__main__":
    for script in (prepare_digits, prepare_audio, prepare_point_clouds, prepare_video, prepare_text):
        script.main()
