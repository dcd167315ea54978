"""DICOM radiographs in and DICOM SEG out: reading a film and what it says about itself (``read``),
the input gate that refuses or flags films a lung mask would be wrong for (``gate``), the patient's
left and right lungs measured in millimetres (``sides``) and the DICOM Segmentation object a viewer
opens (``seg``).

Importing this package imports neither pydicom nor highdicom; each module needs ``pip install
"lungseg[dicom]"`` only when it reads or writes a DICOM file.
"""
